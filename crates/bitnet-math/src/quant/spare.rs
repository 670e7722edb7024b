//! Buffer reuse between weights.

/// Buffers kept from one weight to the next (codes and band buffers of [`kn`], the caller's
/// transposes), up to a number of bytes for each element type. A fresh buffer costs a page
/// fault and a zeroed page per 4 KiB it holds: on the 92 MB bench transformer, 60% of the
/// process's 20,800 page faults were fresh band buffers, and most of the rest fresh codes.
/// Each type has its own limit, so large codes never push out the band buffers a weight reuses
/// in every pass; within a type, a larger buffer displaces smaller ones. Kept buffers are
/// freed with the `Spare`.
pub struct Spare {
    limit: usize,
    /// The kept buffers: element type, size in bytes, the `Vec`.
    kept: std::sync::Mutex<Vec<(std::any::TypeId, usize, KeptBuf)>>,
}

/// A `Vec<S>` kept by [`Spare`], for any `S`.
type KeptBuf = Box<dyn std::any::Any + Send>;

impl Default for Spare {
    /// No limit.
    fn default() -> Self {
        Spare::new(usize::MAX)
    }
}

impl Spare {
    /// Keeps buffers of at most `limit` bytes of each element type.
    pub fn new(limit: usize) -> Spare {
        Spare {
            limit,
            kept: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The kept buffer of `S` that best fits `len` elements (the smallest whose capacity holds
    /// them, else the largest), its contents as they were left; or a new empty one.
    pub fn take<S: Send + 'static>(&self, len: usize) -> Vec<S> {
        let Ok(mut kept) = self.kept.lock() else {
            return Vec::new();
        };
        let fits = |cap: usize| (cap < len, if cap < len { usize::MAX - cap } else { cap });
        let best = (0..kept.len())
            .filter_map(|i| Some((i, kept[i].2.downcast_ref::<Vec<S>>()?.capacity())))
            .min_by_key(|&(_, cap)| fits(cap));
        match best {
            Some((i, _)) => kept
                .swap_remove(i)
                .2
                .downcast::<Vec<S>>()
                .map(|v| *v)
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Keeps `v` for a later [`Spare::take`]. When the kept buffers of `S` would pass the
    /// limit, the smaller ones are freed (smallest first) to make room, else `v` is.
    pub fn give<S: Send + 'static>(&self, v: Vec<S>) {
        let size = v.capacity() * std::mem::size_of::<S>();
        if size == 0 || size > self.limit {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        let ty = std::any::TypeId::of::<Vec<S>>();
        let mut bytes: usize = kept.iter().filter(|e| e.0 == ty).map(|e| e.1).sum();
        while bytes + size > self.limit {
            let smallest = (0..kept.len())
                .filter(|&i| kept[i].0 == ty)
                .min_by_key(|&i| kept[i].1);
            match smallest {
                Some(i) if kept[i].1 < size => bytes -= kept.swap_remove(i).1,
                _ => return,
            }
        }
        kept.push((ty, size, Box::new(v)));
    }
}
