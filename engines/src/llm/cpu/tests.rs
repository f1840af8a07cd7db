use super::*;

#[test]
fn rms_norm_and_rope_follow_their_definitions() {
    let mut out = [0f32; 4];
    rms_norm(
        &[1.0, -1.0, 1.0, -1.0],
        &[1.0, 2.0, 3.0, 4.0],
        0.0,
        &mut out,
    );
    assert_eq!(out, [1.0, -2.0, 3.0, -4.0]);
    let mut h = [1.0f32, 0.0, 0.0, 2.0];
    let half_pi = std::f32::consts::FRAC_PI_2;
    rotate(&mut h, &[(half_pi.cos(), half_pi.sin()), (1.0, 0.0)], false);
    assert!((h[0]).abs() < 1e-6 && (h[1] - 1.0).abs() < 1e-6);
    assert_eq!(&h[2..], &[0.0, 2.0]);
    // NeoX pairs: (0, 2) rotated by pi/2, (1, 3) not at all.
    let mut h = [1.0f32, 0.0, 0.0, 2.0];
    rotate(&mut h, &[(half_pi.cos(), half_pi.sin()), (1.0, 0.0)], true);
    assert!(h[0].abs() < 1e-6 && (h[2] - 1.0).abs() < 1e-6);
    assert_eq!((h[1], h[3]), (0.0, 2.0));
    // GELU (tanh form) at a few points.
    let gelu = quant::scalar::gelu;
    assert_eq!(gelu(0.0), 0.0);
    assert!((gelu(1.0) - 0.841_192).abs() < 1e-5);
    assert!((gelu(-3.0) + 0.003_637_4).abs() < 1e-5);
}

/// The one-token product's prefetch hint stays inside the matrix whatever the row and the
/// distance (it slices the matrix's bytes, so a range past the end would panic).
#[test]
fn prefetch_hints_stay_inside_the_matrix() {
    let ty = WType::Q8_0;
    let rows = 3;
    let m = Matrix::new(ty, rows, 64, vec![0u8; rows * ty.row_bytes(64)]).unwrap();
    for r in 0..rows {
        for ahead in [
            0,
            1,
            ty.row_bytes(64),
            PREFETCH_AHEAD,
            usize::MAX / 2,
            usize::MAX,
        ] {
            for n in [1, ROWS] {
                m.prefetch(r, n, ahead);
            }
        }
    }
}

/// One token takes a matrix's rows in groups up to [`ONE_TOKEN_GROUP_MAX_BYTES`] and one
/// at a time above it; several tokens always in groups.
#[test]
fn one_token_groups_rows_of_matrices_that_stay_in_cache() {
    assert!(row_groups(1, 0));
    assert!(row_groups(1, ONE_TOKEN_GROUP_MAX_BYTES));
    assert!(!row_groups(1, ONE_TOKEN_GROUP_MAX_BYTES + 1));
    // Gemma 3 270M's output matrix (262 144 x 640 in Q8_0) streams one row at a time.
    let gemma_output = 262_144 * WType::Q8_0.row_bytes(640);
    assert!(!row_groups(1, gemma_output));
    // SmolLM2-135M's (49 152 x 576 in Q8_0) is grouped.
    assert!(row_groups(1, 49_152 * WType::Q8_0.row_bytes(576)));
    for b in [2, 7, 512] {
        assert!(row_groups(b, usize::MAX));
    }
}
