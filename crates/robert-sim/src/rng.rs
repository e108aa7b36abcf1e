//! Counter-based randomness: every random draw of the simulation is a pure function of the seed
//! and *what* is drawn (a tag and the indices of the people, phones, day, second involved), never
//! of the order in which threads happen to draw. That is what makes a run independent of thread
//! scheduling, and what keeps two runs with the same seed coupled: the run without tracing draws
//! the same contacts and the same infections as the run with it, wherever behaviour is the same.

use rand_chacha::ChaCha12Rng;
use rand_core::SeedableRng;

/// SplitMix64's finaliser: a bijective 64-bit mixer with full avalanche.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Tags that separate the independent streams of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Tag {
    /// Building the population (households, workplaces, adoption).
    Population = 1,
    /// One person's contacts on one day.
    Contacts = 2,
    /// Transmission along one contact.
    Transmission = 3,
    /// One person's course of disease.
    Disease = 4,
    /// Loss of one HELLO on one link.
    Loss = 5,
    /// RSSI noise of one HELLO on one link.
    Rssi = 6,
    /// A phone's schedule (HELLO phase, ESR time).
    Schedule = 7,
    /// A phone's cryptographic randomness (keys, token ids, upload shuffle).
    PhoneCrypto = 8,
    /// Behaviour after a notification (test, isolation).
    Behaviour = 9,
    /// Attack scenarios.
    Attack = 10,
    /// Initial infections.
    Seeding = 11,
    /// Trips abroad and what travellers do there (multi-country runs).
    Travel = 12,
}

/// A 64-bit value determined by the seed, a tag and up to four indices.
#[inline]
pub fn hash(seed: u64, tag: Tag, a: u64, b: u64, c: u64, d: u64) -> u64 {
    let mut h = mix(seed ^ (tag as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    h = mix(h ^ a);
    h = mix(h ^ b.rotate_left(17));
    h = mix(h ^ c.rotate_left(31));
    mix(h ^ d.rotate_left(47))
}

/// A uniform value in [0, 1) from a hash.
#[inline]
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal value from two hashes (Box–Muller).
pub fn normal(h1: u64, h2: u64) -> f64 {
    let u1 = unit(h1).max(f64::MIN_POSITIVE);
    let u2 = unit(h2);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A small, fast stream for drawing several values about one subject (a person's day, say).
#[derive(Debug, Clone)]
pub struct Stream {
    state: u64,
}

impl Stream {
    /// The stream of `(seed, tag, a, b, c)`.
    pub fn new(seed: u64, tag: Tag, a: u64, b: u64, c: u64) -> Self {
        Self { state: hash(seed, tag, a, b, c, 0x5EED) }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn unit(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// Uniform in `lo..hi` (`lo` if the range is empty).
    #[inline]
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.next_u64() % (hi - lo) }
    }

    /// Uniform real in [lo, hi).
    #[inline]
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// True with probability `p`.
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A Poisson draw with mean `lambda` (Knuth; `lambda` is small here).
    pub fn poisson(&mut self, lambda: f64) -> u32 {
        let l = (-lambda).exp();
        let mut k = 0u32;
        let mut p = 1.0;
        loop {
            p *= self.unit();
            if p <= l || k > 1000 {
                return k;
            }
            k += 1;
        }
    }
}

/// A cryptographic RNG for one phone's or one actor's protocol randomness, derived from the seed
/// (keys made here protect nothing real: the simulation must be reproducible).
pub fn crypto_rng(seed: u64, tag: Tag, a: u64, b: u64) -> ChaCha12Rng {
    let mut key = [0u8; 32];
    for (i, chunk) in key.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&hash(seed, tag, a, b, i as u64, 0xC0FFEE).to_le_bytes());
    }
    ChaCha12Rng::from_seed(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_pure_functions_of_their_key() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, Tag::Contacts, 1, 2, 3), |s, _| Some(s.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, Tag::Contacts, 1, 2, 3), |s, _| Some(s.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(7, Tag::Contacts, 1, 2, 4), |s, _| Some(s.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn unit_and_ranges_stay_in_bounds() {
        let mut s = Stream::new(1, Tag::Population, 0, 0, 0);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let u = s.unit();
            assert!((0.0..1.0).contains(&u));
            sum += u;
            let r = s.range(5, 9);
            assert!((5..9).contains(&r));
        }
        // The mean of 10 000 uniforms is within 0.02 of 1/2 (about 7 standard deviations).
        assert!((sum / 10_000.0 - 0.5).abs() < 0.02);
        assert_eq!(s.range(3, 3), 3);
    }

    #[test]
    fn normal_has_unit_variance() {
        let n = 20_000u64;
        let xs: Vec<f64> =
            (0..n).map(|i| normal(hash(1, Tag::Rssi, i, 0, 0, 0), hash(1, Tag::Rssi, i, 1, 0, 0))).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    }
}
