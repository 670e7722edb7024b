//! CPU time for the speed examples (Linux `clock_gettime`): on a shared machine the bytes per
//! CPU second say what the code does, whatever other processes take.

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

fn seconds(clock: i32) -> f64 {
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `t` is a valid out-pointer for the call.
    unsafe { clock_gettime(clock, &mut t) };
    t.sec as f64 + t.nsec as f64 * 1e-9
}

/// CPU seconds this process has used (clock 2, `CLOCK_PROCESS_CPUTIME_ID`).
#[allow(dead_code)] // each example uses one of the two clocks
pub fn process_seconds() -> f64 {
    seconds(2)
}

/// CPU seconds the calling thread has used (clock 3, `CLOCK_THREAD_CPUTIME_ID`).
#[allow(dead_code)]
pub fn thread_seconds() -> f64 {
    seconds(3)
}
