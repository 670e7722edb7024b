//! What the kernel tests share.

/// A deterministic stream of values (xorshift), so one proptest case makes large buffers.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    #[allow(dead_code)] // not every test file draws ternary codes
    pub fn ternary(&mut self) -> i8 {
        (self.next() % 3) as i8 - 1
    }
    pub fn float(&mut self) -> f32 {
        // Mostly small values with a few large ones, as activations are.
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let v = (u * 2.0 - 1.0) as f32;
        if self.next().is_multiple_of(50) {
            v * 40.0
        } else {
            v
        }
    }
}
