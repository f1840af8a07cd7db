//! Token sampling: greedy at temperature 0, otherwise temperature + nucleus (top-p) sampling
//! driven by a seeded SplitMix64 generator, so the same request always picks the same tokens.
//!
//! Every step is deterministic: ties are broken by the lower token id, probabilities are
//! summed in a fixed order, and the generator is this file's own (no dependency whose
//! stream could change between versions).

pub use studio_core::splitmix::SplitMix64;

/// How tokens are chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Nucleus size in `(0, 1]`; 1 = off.
    pub top_p: f32,
    /// Seed of the generator.
    pub seed: u64,
}

impl SamplingParams {
    /// Checks the wire values: `temperature` finite and >= 0, `topP` in (0, 1].
    pub fn new(temperature: f32, top_p: Option<f32>, seed: u64) -> Result<SamplingParams, String> {
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(format!(
                "temperature must be a number >= 0, got {temperature}"
            ));
        }
        let top_p = top_p.unwrap_or(1.0);
        if !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
            return Err(format!("topP must be in (0, 1], got {top_p}"));
        }
        Ok(SamplingParams {
            temperature,
            top_p,
            seed,
        })
    }
}

/// Picks tokens from logits.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Scratch: (probability, id) pairs, reused between steps.
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            rng: SplitMix64::new(params.seed),
            params,
            scratch: Vec::new(),
        }
    }

    /// Whether this sampler is greedy.
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0
    }

    /// The next token for `logits` (one score per vocabulary entry; NaN counts as -inf).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() || logits.len() <= 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = logits
            .iter()
            .copied()
            .filter(|x| !x.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        self.scratch.clear();
        let mut total = 0.0f64;
        for (id, &l) in logits.iter().enumerate() {
            let p = if l.is_nan() {
                0.0
            } else {
                ((l - max) * inv_t).exp()
            };
            if p > 0.0 {
                total += f64::from(p);
                self.scratch.push((p, id as u32));
            }
        }
        if self.params.top_p < 1.0 {
            // Most probable first, lower id first among equals: a total order, so the
            // (faster) unstable sort gives a unique result.
            self.scratch
                .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let want = f64::from(self.params.top_p) * total;
            let mut acc = 0.0f64;
            let mut keep = 0;
            for &(p, _) in &self.scratch {
                acc += f64::from(p);
                keep += 1;
                if acc >= want {
                    break;
                }
            }
            self.scratch.truncate(keep.max(1));
            total = acc;
        }
        let target = self.rng.next_f64() * total;
        let mut acc = 0.0f64;
        for &(p, id) in &self.scratch {
            acc += f64::from(p);
            if acc > target {
                return id;
            }
        }
        self.scratch.last().map(|&(_, id)| id).unwrap_or(0)
    }
}

/// The index of the largest logit (the lowest index among equals; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(t: f32, top_p: Option<f32>, seed: u64) -> Sampler {
        Sampler::new(SamplingParams::new(t, top_p, seed).unwrap())
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 1234567 (the published SplitMix64 test vector).
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        let x = SplitMix64::new(7).next_f64();
        assert!((0.0..1.0).contains(&x));
    }

    #[test]
    fn greedy_is_argmax_with_low_id_ties() {
        let mut s = sampler(0.0, None, 1);
        assert!(s.is_greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(s.sample(&[f32::NAN, 0.5, 0.2]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = sampler(1.0, Some(0.95), seed);
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 keeps the first token only, 0.8 two.
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let mut s = sampler(1.0, Some(0.5), 9);
        assert!((0..200).all(|_| s.sample(&logits) == 0));
        let mut s = sampler(1.0, Some(0.8), 9);
        let picks: Vec<u32> = (0..400).map(|_| s.sample(&logits)).collect();
        assert!(picks.iter().all(|&t| t < 2));
        assert!(picks.contains(&1));
    }

    #[test]
    fn temperature_shapes_the_distribution() {
        let logits = [1.0f32, 0.0];
        let share = |t| {
            let mut s = sampler(t, None, 5);
            (0..4000).filter(|_| s.sample(&logits) == 0).count() as f64 / 4000.0
        };
        // softmax([1, 0] / t)[0]: t = 1 -> 0.731, t = 0.25 -> 0.982.
        assert!((share(1.0) - 0.731).abs() < 0.03, "{}", share(1.0));
        assert!(share(0.25) > 0.96);
    }

    #[test]
    fn invalid_params() {
        assert!(SamplingParams::new(-0.1, None, 0).is_err());
        assert!(SamplingParams::new(f32::NAN, None, 0).is_err());
        assert!(SamplingParams::new(0.7, Some(0.0), 0).is_err());
        assert!(SamplingParams::new(0.7, Some(1.5), 0).is_err());
        assert!(SamplingParams::new(0.0, Some(1.0), 0).is_ok());
    }
}
