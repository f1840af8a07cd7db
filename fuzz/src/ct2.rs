//! `ct2`: the fuzzer's bytes as a CTranslate2 `model.bin`, through the reader the Whisper
//! engine uses for faster-whisper checkpoints ([`Ct2Model::parse`]), the dimensions it
//! derives ([`Ct2Model::whisper_config`]) and their limits
//! ([`studio_engines::whisper::model::check_config`]).
//!
//! Checks:
//! * no panic and no abort (a shape whose byte count overflows used to wrap; a rank-0
//!   position table was indexed);
//! * every refusal is not retryable;
//! * every variable of a parsed model lies inside the file and holds exactly
//!   `product(shape) * size(dtype)` bytes, and every alias target was read as written
//!   ([`check_variables`]);
//! * small variables convert to tensors or fail cleanly (int8 / int16 ones with their
//!   `_scale`), and derived dimensions pass the limits or are refused.
//!
//! Seeds (`corpus/ct2/`): small `model.bin` files of binary versions 1 to 6 with every
//! dtype, quantised weights with scales, aliases, and a Whisper-shaped set of variables.

use candle_core::Device;
use studio_engines::whisper::ct2::Ct2Model;
use studio_engines::whisper::model::check_config;

/// Variables at most this big (bytes) are turned into tensors.
pub const MAX_TENSOR_BYTES: usize = 1 << 16;

/// Runs every check on `data`.
pub fn check(data: &[u8]) -> Result<(), String> {
    let model = match Ct2Model::parse(data.to_vec()) {
        Err(e) if e.retryable() => {
            return Err(format!(
                "a model.bin was refused as retryable: {}",
                e.message
            ))
        }
        Err(_) => return Ok(()),
        Ok(m) => m,
    };
    check_variables(&model, data.len())?;
    for v in &model.variables {
        if v.data.len() <= MAX_TENSOR_BYTES {
            if let Err(e) = model.tensor(&v.name, &Device::Cpu) {
                if e.retryable() {
                    return Err(format!("a tensor failed as retryable: {}", e.message));
                }
            }
        }
        let _ = model.scalar_int(&v.name);
    }
    if let Ok(config) = model.whisper_config() {
        let _ = check_config(&config);
    }
    Ok(())
}

/// Every variable inside the file with exactly the bytes its shape and type need.
pub fn check_variables(model: &Ct2Model, len: usize) -> Result<(), String> {
    for v in &model.variables {
        if v.data.end > len || v.data.start > v.data.end {
            return Err(format!(
                "`{}` claims bytes {:?} of a {len}-byte file",
                v.name, v.data
            ));
        }
        let needed = v
            .shape
            .iter()
            .try_fold(v.dtype.size(), |acc, &d| acc.checked_mul(d));
        if needed != Some(v.data.len()) {
            return Err(format!(
                "`{}`: shape {:?} of {:?} holds {} bytes",
                v.name,
                v.shape,
                v.dtype,
                v.data.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use studio_engines::whisper::ct2::write_model_bin;

    #[test]
    fn the_variable_check_can_fail() {
        let bytes = write_model_bin("WhisperSpec", 1, &[("x", &[2], 0, &[0u8; 8])], &[]);
        let mut model = Ct2Model::parse(bytes.clone()).unwrap();
        assert!(check_variables(&model, bytes.len()).is_ok());
        model.variables[0].shape = vec![3];
        assert!(check_variables(&model, bytes.len()).is_err());
        model.variables[0].shape = vec![2];
        assert!(check_variables(&model, 4).is_err());
    }
}
