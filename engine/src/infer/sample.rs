//! Host-side draws from the image head's mixture, unguided and with classifier-free guidance.
//!
//! Sampling reads one position's mixture parameters back from the device (a few hundred
//! floats), so every draw is made on the host from one seeded generator and a seed always
//! gives the same image, whatever the backend.

use rand::Rng;
use rand::rngs::StdRng;
use rand_distr::StandardNormal;

/// Tries of the rejection sampler before it falls back to the conditional draw.
pub const MAX_REJECTION_TRIES: usize = 1000;

/// Mixture parameters of one position of one example, read back from the device.
#[derive(Clone, Debug, PartialEq)]
pub struct MixtureRow {
    /// `num_mixtures` logits, with the mixture temperature applied.
    pub logits: Vec<f32>,
    /// `num_mixtures * soft_token_dim` means, component-major.
    pub means: Vec<f32>,
    /// `num_mixtures * soft_token_dim` scales, with the scale temperature applied.
    pub scales: Vec<f32>,
}

impl MixtureRow {
    /// Returns the number of values per component.
    pub fn soft_token_dim(&self) -> usize {
        self.means.len() / self.logits.len()
    }

    /// Draws a component index from the softmax of the logits.
    pub fn sample_component(&self, rng: &mut StdRng) -> usize {
        let max = self
            .logits
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f64> = self
            .logits
            .iter()
            .map(|&l| f64::from(l - max).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut target = rng.random::<f64>() * total;
        for (index, weight) in weights.iter().enumerate() {
            target -= weight;
            if target < 0.0 {
                return index;
            }
        }
        weights.len() - 1
    }

    fn component(&self, index: usize) -> (&[f32], &[f32]) {
        let k = self.soft_token_dim();
        let range = index * k..(index + 1) * k;
        (&self.means[range.clone()], &self.scales[range])
    }
}

/// Draws one soft token from a mixture.
pub fn sample_unguided(row: &MixtureRow, rng: &mut StdRng) -> Vec<f32> {
    let component = row.sample_component(rng);
    let (means, scales) = row.component(component);
    means
        .iter()
        .zip(scales)
        .map(|(&mean, &scale)| {
            let normal: f64 = rng.sample(StandardNormal);
            (f64::from(mean) + f64::from(scale) * normal) as f32
        })
        .collect()
}

/// Draws one soft token under classifier-free guidance with weight `weight`.
///
/// The component is drawn from the conditional mixture and paired with the same component of
/// the unconditional one. Each value then follows the density proportional to
/// `N(mu_c, s_c)^(1 + w) / N(mu_u, s_u)^w`, drawn by the reference's rejection sampler, which
/// falls back to the conditional draw after [`MAX_REJECTION_TRIES`] rejections. With
/// `weight` 0 the result equals [`sample_unguided`] for the same generator state.
pub fn sample_guided(
    conditional: &MixtureRow,
    unconditional: &MixtureRow,
    weight: f64,
    rng: &mut StdRng,
) -> Vec<f32> {
    let component = conditional.sample_component(rng);
    let (means_c, scales_c) = conditional.component(component);
    let (means_u, scales_u) = unconditional.component(component);
    (0..means_c.len())
        .map(|c| {
            let density = GuidedGaussian {
                mean_c: f64::from(means_c[c]),
                scale_c: f64::from(scales_c[c]),
                mean_u: f64::from(means_u[c]),
                scale_u: f64::from(scales_u[c]),
                weight,
            };
            density.sample(rng) as f32
        })
        .collect()
}

/// The guided density of one value: `N(mean_c, scale_c)^(1 + w) / N(mean_u, scale_u)^w`.
#[derive(Clone, Copy, Debug)]
pub struct GuidedGaussian {
    pub mean_c: f64,
    pub scale_c: f64,
    pub mean_u: f64,
    pub scale_u: f64,
    pub weight: f64,
}

impl GuidedGaussian {
    /// Returns the log of the unnormalised guided density.
    pub fn log_density(&self, x: f64) -> f64 {
        let log_normal = |mean: f64, scale: f64| -0.5 * ((x - mean) / scale).powi(2) - scale.ln();
        (1.0 + self.weight) * log_normal(self.mean_c, self.scale_c)
            - self.weight * log_normal(self.mean_u, self.scale_u)
    }

    /// Draws one value by rejection sampling, or the conditional draw when that gives up.
    ///
    /// Where `(1 + w) / s_c^2 - w / s_u^2` is positive the guided density is a Gaussian and
    /// could be drawn directly, but its mean extrapolates from `mu_u` past `mu_c` and can lie
    /// far from both, the more so as that precision nears zero. Such values decode to stray
    /// saturated pixels. The reference's proposal, centred on `mu_c`, rarely reaches that
    /// region, so its sampler gives up there and keeps the conditional draw. This one does
    /// the same.
    pub fn sample(&self, rng: &mut StdRng) -> f64 {
        let normal: f64 = rng.sample(StandardNormal);
        let conditional = self.mean_c + self.scale_c * normal;
        if self.weight == 0.0 {
            return conditional;
        }
        self.rejection_sample(rng).unwrap_or(conditional)
    }

    /// Draws by rejection sampling with the reference's proposal `N(mean_c, 2 max(scale_c, scale_u))`.
    /// The envelope factor is the largest density ratio on a grid of ±10 proposal stds, as in
    /// the reference. Returns `None` after [`MAX_REJECTION_TRIES`] rejections.
    pub fn rejection_sample(&self, rng: &mut StdRng) -> Option<f64> {
        let proposal_std = 2.0 * self.scale_c.max(self.scale_u);
        let log_proposal = |x: f64| -0.5 * ((x - self.mean_c) / proposal_std).powi(2);
        let log_envelope = (0..=1000)
            .map(|i| self.mean_c + proposal_std * (-10.0 + 0.02 * i as f64))
            .map(|x| self.log_density(x) - log_proposal(x))
            .fold(f64::NEG_INFINITY, f64::max);
        for _ in 0..MAX_REJECTION_TRIES {
            let x = self.mean_c + proposal_std * rng.sample::<f64, _>(StandardNormal);
            let log_accept = self.log_density(x) - log_proposal(x) - log_envelope;
            if rng.random::<f64>().ln() < log_accept {
                return Some(x);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn row(logits: Vec<f32>, means: Vec<f32>, scales: Vec<f32>) -> MixtureRow {
        MixtureRow {
            logits,
            means,
            scales,
        }
    }

    #[test]
    fn zero_guidance_equals_unguided() {
        let conditional = row(
            vec![0.3, -1.0],
            vec![0.5, 1.0, -2.0, 0.1],
            vec![0.7, 1.2, 0.3, 2.0],
        );
        let unconditional = row(
            vec![1.0, 0.0],
            vec![0.0, 0.0, 1.0, 1.0],
            vec![1.0, 1.0, 1.0, 1.0],
        );
        for seed in 0..20 {
            let a = sample_unguided(&conditional, &mut StdRng::seed_from_u64(seed));
            let b = sample_guided(
                &conditional,
                &unconditional,
                0.0,
                &mut StdRng::seed_from_u64(seed),
            );
            assert_eq!(a, b);
        }
    }

    /// Returns the mean and std of the guided density when its precision
    /// `(1 + w) / s_c^2 - w / s_u^2` is positive, so that it is a Gaussian.
    fn closed_form(density: &GuidedGaussian) -> Option<(f64, f64)> {
        let GuidedGaussian {
            mean_c,
            scale_c,
            mean_u,
            scale_u,
            weight,
        } = *density;
        let precision = (1.0 + weight) / scale_c.powi(2) - weight / scale_u.powi(2);
        (precision > 0.0).then(|| {
            let mean = ((1.0 + weight) * mean_c / scale_c.powi(2)
                - weight * mean_u / scale_u.powi(2))
                / precision;
            (mean, precision.sqrt().recip())
        })
    }

    fn moments(values: &[f64]) -> (f64, f64) {
        let count = values.len() as f64;
        let mean = values.iter().sum::<f64>() / count;
        let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / count;
        (mean, var)
    }

    /// Near the conditional component the draws follow the guided density's closed form.
    #[test]
    fn near_density_matches_closed_form() {
        let density = GuidedGaussian {
            mean_c: 1.0,
            scale_c: 0.8,
            mean_u: 0.2,
            scale_u: 1.5,
            weight: 2.0,
        };
        let (mean, std) = closed_form(&density).expect("positive precision");
        let mut rng = StdRng::seed_from_u64(7);
        let count = 20_000;
        let drawn: Vec<f64> = (0..count).map(|_| density.sample(&mut rng)).collect();
        let (drawn_mean, drawn_var) = moments(&drawn);
        // Standard error of a mean of 20k draws is std / 141; allow five of them.
        let tolerance = 5.0 * std / (count as f64).sqrt();
        assert!(
            (drawn_mean - mean).abs() < tolerance,
            "{drawn_mean} vs {mean}"
        );
        assert!((drawn_var / (std * std) - 1.0).abs() < 0.05, "{drawn_var}");
    }

    /// A guided density whose mass lies far from the conditional component keeps the
    /// conditional draw instead of an extreme value.
    #[test]
    fn far_density_keeps_conditional_draw() {
        let density = GuidedGaussian {
            mean_c: 0.0,
            scale_c: 1.0,
            mean_u: -3.0,
            scale_u: 1.0,
            weight: 6.0,
        };
        // The closed form is N(18, 1), nine proposal stds from the conditional mean.
        let (mean, std) = closed_form(&density).expect("positive precision");
        assert!((mean - 18.0).abs() < 1e-9, "{mean}");
        assert!((std - 1.0).abs() < 1e-9, "{std}");
        let mut rng = StdRng::seed_from_u64(5);
        let drawn: Vec<f64> = (0..200).map(|_| density.sample(&mut rng)).collect();
        let (drawn_mean, drawn_var) = moments(&drawn);
        assert!(drawn_mean.abs() < 0.3, "{drawn_mean}");
        assert!((drawn_var - 1.0).abs() < 0.3, "{drawn_var}");
        assert!(drawn.iter().all(|x| x.abs() < 5.0), "{drawn:?}");
    }

    #[test]
    fn non_gaussian_guidance_still_draws_finite_values() {
        // The unconditional scale is narrower than the conditional one: precision < 0.
        let density = GuidedGaussian {
            mean_c: 0.0,
            scale_c: 1.0,
            mean_u: 0.5,
            scale_u: 0.5,
            weight: 3.0,
        };
        assert!(closed_form(&density).is_none());
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            assert!(density.sample(&mut rng).is_finite());
        }
    }

    #[test]
    fn component_draws_follow_the_weights() {
        let mixture = row(vec![0.0, (3.0f32).ln()], vec![0.0, 0.0], vec![1.0, 1.0]);
        let mut rng = StdRng::seed_from_u64(11);
        let ones = (0..10_000)
            .filter(|_| mixture.sample_component(&mut rng) == 1)
            .count();
        assert!((ones as f64 / 10_000.0 - 0.75).abs() < 0.02, "{ones}");
    }
}
