//! Samplers (DDIM, Euler, Euler ancestral) over a model's noise schedule, and the seeded
//! Gaussian noise they draw from.
//!
//! candle's CPU device cannot be seeded (`Device::set_seed` fails on the CPU) and its
//! Euler-ancestral scheduler draws from the unseeded thread RNG, so the pipeline draws every
//! random number (the initial latents and the ancestral noise) from [`NoiseRng`], a
//! SplitMix64 generator seeded from the job, and the sampler steps are written here in
//! terms of plain tensor arithmetic. Same seed, same numbers, on every run.

use candle_core::{Device, Tensor};

use super::config::{BetaSchedule, Prediction, SchedulerConfig, Spacing};
use crate::error::EngineError;

/// The `samplingMethod` names this pipeline runs (sd-cli's spelling).
pub const SAMPLER_NAMES: [&str; 4] = ["euler_a", "euler", "ddim", "ddim_trailing"];

/// The sampler used when neither the task nor `cliDefaults` names one (sd-cli's default).
pub const DEFAULT_SAMPLER: Sampler = Sampler::EulerAncestral;

/// A sampling method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    /// `euler_a`: Euler ancestral (k-diffusion), fresh seeded noise at every step.
    EulerAncestral,
    /// `euler`: deterministic Euler (k-diffusion).
    Euler,
    /// `ddim`: DDIM with η = 0, on the model's timestep spacing.
    Ddim,
    /// `ddim_trailing`: DDIM with η = 0 on `trailing` spacing whatever the model says.
    DdimTrailing,
}

impl Sampler {
    /// Parses a `samplingMethod` (case-insensitive; `euler_ancestral` and `euler-a` are
    /// accepted for `euler_a`).
    pub fn parse(name: &str) -> Result<Sampler, EngineError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "euler_a" | "euler-a" | "euler_ancestral" | "eulera" => Ok(Sampler::EulerAncestral),
            "euler" => Ok(Sampler::Euler),
            "ddim" => Ok(Sampler::Ddim),
            "ddim_trailing" => Ok(Sampler::DdimTrailing),
            _ => Err(EngineError::invalid_input(format!(
                "samplingMethod `{name}` is not supported by the candle image engine; it runs {}",
                SAMPLER_NAMES.join(", ")
            ))),
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Sampler::EulerAncestral => "euler_a",
            Sampler::Euler => "euler",
            Sampler::Ddim => "ddim",
            Sampler::DdimTrailing => "ddim_trailing",
        }
    }
}

/// A SplitMix64 generator turned into standard normal samples (Box–Muller).
#[derive(Clone, Debug)]
pub struct NoiseRng {
    state: u64,
    spare: Option<f64>,
}

impl NoiseRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> NoiseRng {
        NoiseRng {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        studio_core::splitmix::splitmix64_next(&mut self.state)
    }

    /// A uniform sample in (0, 1] (never 0, so its logarithm is finite).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// One standard normal sample.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let theta = std::f64::consts::TAU * self.uniform();
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// A tensor of `shape` filled with standard normal f32 samples, in row-major order.
    pub fn tensor(&mut self, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.normal() as f32).collect();
        Tensor::from_vec(data, shape, device)
    }
}

/// The cumulative products of `1 - beta` over the training timesteps.
pub fn alphas_cumprod(config: &SchedulerConfig) -> Vec<f64> {
    let t = config.train_timesteps;
    let lin = |a: f64, b: f64, i: usize| a + (b - a) * i as f64 / (t - 1) as f64;
    let betas: Vec<f64> = match config.beta_schedule {
        BetaSchedule::Linear => (0..t)
            .map(|i| lin(config.beta_start, config.beta_end, i))
            .collect(),
        BetaSchedule::ScaledLinear => (0..t)
            .map(|i| lin(config.beta_start.sqrt(), config.beta_end.sqrt(), i).powi(2))
            .collect(),
        BetaSchedule::SquaredCosCapV2 => {
            let alpha_bar = |x: f64| {
                ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..t)
                .map(|i| {
                    let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                })
                .collect()
        }
    };
    let mut acc = 1.0;
    betas
        .into_iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

/// The `steps` inference timesteps, highest first.
pub fn timesteps(config: &SchedulerConfig, spacing: Spacing, steps: usize) -> Vec<usize> {
    let t = config.train_timesteps;
    match spacing {
        Spacing::Leading => {
            let ratio = (t / steps).max(1);
            (0..steps)
                .map(|i| (i * ratio + config.steps_offset).min(t - 1))
                .rev()
                .collect()
        }
        Spacing::Trailing => {
            let ratio = t as f64 / steps as f64;
            (0..steps)
                .map(|i| ((t as f64 - i as f64 * ratio).round() as usize).clamp(1, t) - 1)
                .collect()
        }
        Spacing::Linspace => {
            if steps == 1 {
                return vec![t - 1];
            }
            (0..steps)
                .map(|i| ((t - 1) as f64 * i as f64 / (steps - 1) as f64).round() as usize)
                .rev()
                .collect()
        }
    }
}

/// One sampling run: the timesteps and per-step coefficients of a sampler on a schedule.
#[derive(Clone, Debug)]
pub struct Sampling {
    sampler: Sampler,
    prediction: Prediction,
    timesteps: Vec<usize>,
    /// `alphas_cumprod` at each timestep (DDIM), plus the final one (`alphas_cumprod[0]`).
    alphas: Vec<f64>,
    /// σ = √((1 − ᾱ)/ᾱ) at each timestep (Euler), plus a final 0.
    sigmas: Vec<f64>,
}

impl Sampling {
    /// A run of `steps` steps (1 to the schedule's training timesteps).
    pub fn new(
        config: &SchedulerConfig,
        sampler: Sampler,
        steps: usize,
    ) -> Result<Sampling, EngineError> {
        if steps == 0 || steps > config.train_timesteps {
            return Err(EngineError::invalid_input(format!(
                "steps must be 1 to {} for this model, not {steps}",
                config.train_timesteps
            )));
        }
        let spacing = match sampler {
            Sampler::DdimTrailing => Spacing::Trailing,
            _ => config.spacing,
        };
        let ac = alphas_cumprod(config);
        let timesteps = timesteps(config, spacing, steps);
        let mut alphas: Vec<f64> = timesteps.iter().map(|&t| ac[t]).collect();
        // `set_alpha_to_one = false`, as Stable Diffusion's schedulers are configured.
        alphas.push(ac[0]);
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| ((1.0 - ac[t]) / ac[t]).sqrt())
            .collect();
        sigmas.push(0.0);
        Ok(Sampling {
            sampler,
            prediction: config.prediction,
            timesteps,
            alphas,
            sigmas,
        })
    }

    /// The sampler.
    pub fn sampler(&self) -> Sampler {
        self.sampler
    }

    /// The timesteps, highest first (one UNet evaluation each).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn is_euler(&self) -> bool {
        matches!(self.sampler, Sampler::Euler | Sampler::EulerAncestral)
    }

    /// The starting latents from standard normal `noise`.
    pub fn initial(&self, noise: Tensor) -> candle_core::Result<Tensor> {
        if self.is_euler() {
            noise * (self.sigmas[0] * self.sigmas[0] + 1.0).sqrt()
        } else {
            Ok(noise)
        }
    }

    /// What the UNet is fed at step `i` for latents `x`.
    pub fn model_input(&self, i: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.is_euler() {
            let s = self.sigmas[i];
            x * (1.0 / (s * s + 1.0).sqrt())
        } else {
            Ok(x.clone())
        }
    }

    /// The latents after step `i`, given the (guided) UNet output `out` for latents `x`.
    /// The ancestral sampler draws its noise from `rng`.
    pub fn step(
        &self,
        i: usize,
        out: &Tensor,
        x: &Tensor,
        rng: &mut NoiseRng,
    ) -> candle_core::Result<Tensor> {
        if self.is_euler() {
            self.euler_step(i, out, x, rng)
        } else {
            self.ddim_step(i, out, x)
        }
    }

    fn ddim_step(&self, i: usize, out: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        let a = self.alphas[i];
        let a_prev = self.alphas[i + 1];
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        let (x0, eps) = match self.prediction {
            Prediction::Epsilon => (((x - (out * sb)?)? * (1.0 / sa))?, out.clone()),
            Prediction::V => (((x * sa)? - (out * sb)?)?, ((out * sa)? + (x * sb)?)?),
            Prediction::Sample => (out.clone(), ((x - (out * sa)?)? * (1.0 / sb))?),
        };
        (x0 * a_prev.sqrt())? + (eps * (1.0 - a_prev).sqrt())?
    }

    fn euler_step(
        &self,
        i: usize,
        out: &Tensor,
        x: &Tensor,
        rng: &mut NoiseRng,
    ) -> candle_core::Result<Tensor> {
        let s = self.sigmas[i];
        let s_next = self.sigmas[i + 1];
        let x0 = match self.prediction {
            Prediction::Epsilon => (x - (out * s)?)?,
            Prediction::V => ((x * (1.0 / (s * s + 1.0)))? - (out * (s / (s * s + 1.0).sqrt()))?)?,
            Prediction::Sample => out.clone(),
        };
        if s_next == 0.0 {
            return Ok(x0);
        }
        // d = (x - x0) / σ; Euler moves x along d from σ to the target σ.
        let d = ((x - &x0)? * (1.0 / s))?;
        match self.sampler {
            Sampler::EulerAncestral => {
                let up = (s_next * s_next * (s * s - s_next * s_next) / (s * s))
                    .max(0.0)
                    .sqrt()
                    .min(s_next);
                let down = (s_next * s_next - up * up).max(0.0).sqrt();
                let moved = (x + (d * (down - s))?)?;
                let noise = rng.tensor(x.dims(), x.device())?;
                moved + (noise * up)?
            }
            _ => x + (d * (s_next - s))?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_seeded_and_normal() {
        let a: Vec<f64> = {
            let mut r = NoiseRng::new(7);
            (0..4).map(|_| r.normal()).collect()
        };
        let b: Vec<f64> = {
            let mut r = NoiseRng::new(7);
            (0..4).map(|_| r.normal()).collect()
        };
        assert_eq!(a, b);
        let mut r = NoiseRng::new(8);
        assert_ne!(a[0], r.normal());
        let mut r = NoiseRng::new(1);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn sd15_schedule() {
        let c = SchedulerConfig::default();
        let ac = alphas_cumprod(&c);
        assert_eq!(ac.len(), 1000);
        // diffusers: alphas_cumprod[0] = 1 - 0.00085, [999] ≈ 0.00466.
        assert!((ac[0] - 0.99915).abs() < 1e-9);
        assert!((ac[999] - 0.004_660_5).abs() < 1e-5, "{}", ac[999]);
        assert_eq!(timesteps(&c, Spacing::Leading, 4), [751, 501, 251, 1]);
        assert_eq!(timesteps(&c, Spacing::Trailing, 4), [999, 749, 499, 249]);
        assert_eq!(timesteps(&c, Spacing::Linspace, 3), [999, 500, 0]);
        assert_eq!(timesteps(&c, Spacing::Leading, 1000).len(), 1000);
    }

    #[test]
    fn sampler_names() {
        for name in SAMPLER_NAMES {
            assert_eq!(Sampler::parse(name).unwrap().name(), name);
        }
        assert_eq!(Sampler::parse("Euler_A").unwrap(), Sampler::EulerAncestral);
        let e = Sampler::parse("dpm++2m").unwrap_err();
        assert!(!e.retryable());
        assert!(e.message.contains("euler_a"), "{e}");
    }

    #[test]
    fn steps_are_bounded() {
        let c = SchedulerConfig::default();
        assert!(Sampling::new(&c, Sampler::Ddim, 0).is_err());
        assert!(Sampling::new(&c, Sampler::Ddim, 1001).is_err());
        let s = Sampling::new(&c, Sampler::Euler, 3).unwrap();
        assert_eq!(s.timesteps().len(), 3);
    }

    #[test]
    fn a_perfect_denoiser_recovers_the_sample() {
        // A model that knows the true noise (epsilon), velocity (v) or sample lands every
        // deterministic sampler on x0.
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[[0.5f32, -1.0, 2.0]], &dev).unwrap();
        let noise = Tensor::new(&[[1.0f32, 0.3, -0.7]], &dev).unwrap();
        for prediction in [Prediction::Epsilon, Prediction::V, Prediction::Sample] {
            let c = SchedulerConfig {
                prediction,
                ..SchedulerConfig::default()
            };
            for sampler in [Sampler::Ddim, Sampler::DdimTrailing, Sampler::Euler] {
                let s = Sampling::new(&c, sampler, 5).unwrap();
                let mut rng = NoiseRng::new(0);
                // Start from the exact noisy sample at the first timestep.
                let mut x = if s.is_euler() {
                    (&x0 + (&noise * s.sigmas[0]).unwrap()).unwrap()
                } else {
                    let a = s.alphas[0];
                    ((&x0 * a.sqrt()).unwrap() + (&noise * (1.0 - a).sqrt()).unwrap()).unwrap()
                };
                for i in 0..s.timesteps().len() {
                    // ᾱ of this step, and x in the variance-preserving scale.
                    let (a, x_vp) = if s.is_euler() {
                        let a = 1.0 / (1.0 + s.sigmas[i] * s.sigmas[i]);
                        (a, (&x * a.sqrt()).unwrap())
                    } else {
                        (s.alphas[i], x.clone())
                    };
                    let eps = ((&x_vp - (&x0 * a.sqrt()).unwrap()).unwrap()
                        * (1.0 / (1.0 - a).sqrt()))
                    .unwrap();
                    let out = match prediction {
                        Prediction::Epsilon => eps,
                        Prediction::V => ((&eps * a.sqrt()).unwrap()
                            - (&x0 * (1.0 - a).sqrt()).unwrap())
                        .unwrap(),
                        Prediction::Sample => x0.clone(),
                    };
                    x = s.step(i, &out, &x, &mut rng).unwrap();
                }
                let got: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                // DDIM ends at ᾱ_0 < 1, Euler at σ = 0.
                for (g, w) in got.iter().zip([0.5f32, -1.0, 2.0]) {
                    assert!((g - w).abs() < 0.05, "{prediction:?} {sampler:?}: {got:?}");
                }
            }
        }
    }
}
