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
