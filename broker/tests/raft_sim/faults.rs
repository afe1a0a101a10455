//! Random faults for protocol runs on the simulation.

use rand::seq::SliceRandom;
use rand::Rng;

use super::Cluster;

impl Cluster {
    /// One step of a fault schedule, by `roll` in 0..26 (anything else does nothing): crash
    /// an up node (0-3), restart a down one (4-11), isolate one (12-15), heal (16-25).
    pub fn random_fault(&mut self, roll: u32) {
        let ids = self.ids();
        match roll {
            0..=3 => {
                let up = self.up_ids();
                if let Some(&id) = up.choose(&mut self.rng) {
                    self.crash(id);
                }
            }
            4..=11 => {
                let down: Vec<u64> = ids.iter().copied().filter(|&id| !self.is_up(id)).collect();
                if let Some(&id) = down.choose(&mut self.rng) {
                    self.restart(id);
                }
            }
            12..=15 => {
                let id = ids[self.rng.gen_range(0..ids.len())];
                self.isolate(id);
            }
            16..=25 => self.heal(),
            _ => {}
        }
    }
}

/// Runs `one_run` for seeds `0..n` (`n` from the environment variable `var`, else `default`)
/// and sums the three counts each run returns; the first failing seed panics with how to
/// replay it.
pub fn seeded_runs(
    var: &str,
    default: u64,
    mut one_run: impl FnMut(u64) -> Result<(usize, usize, usize), String>,
) -> (u64, [usize; 3]) {
    let runs: u64 = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let mut sums = [0usize; 3];
    for seed in 0..runs {
        match one_run(seed) {
            Ok((a, b, c)) => {
                sums[0] += a;
                sums[1] += b;
                sums[2] += c;
            }
            Err(e) => panic!(
                "seed {seed}: {e} (replay: {var}={} and this seed)",
                seed + 1
            ),
        }
    }
    (runs, sums)
}
