//! Standard output that a closed pipe stops quietly: `println!` panics when the reader has gone
//! (`flaxlayer inspect B | head -1`), so the commands print with [`outln!`], which returns the
//! write error, and `main` exits 0 on a broken pipe.

/// `println!` that returns `Err` (with `?`) instead of panicking when stdout is closed.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// Whether an error is a write to a closed pipe, anywhere in its chain.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
