//! A function's *redirect method*: how an old function is sent to its new
//! one, and the one policy that picks it. The runtime applies it to the
//! bytes in memory (`ulp-runtime/src/site.rs`), the tool to the bytes in
//! the file (`ulp_core::redirect`, for `ulp livepatchable --functions`),
//! so both agree on every function.

/// How one function is redirected. `P` is what redirecting a padded
/// function needs to know and `R` a rewritten entry: the runtime keeps the
/// bytes it found there, the tool the number of bytes displaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method<P = (), R = usize> {
    /// Built with the padding (`-fpatchable-function-entry=16,14`): a stub
    /// in the 14 bytes before the entry, a 2-byte jump at the entry.
    Padded(P),
    /// No padding: its first instructions are overwritten by a `jmp`
    /// ([`rewrite_plan`](crate::rewrite_plan)), and move to a trampoline.
    Rewrite(R),
}

/// The policy, in this order: an IFUNC resolver is refused (`ifunc`, padded
/// or not: the loader has called it already, and redirecting it changes
/// nothing the process calls); a function with padding is redirected
/// through it (`padded`: `None` when it has none, else its site or why
/// that padding cannot be used); any other by an entry rewrite (`rewrite`:
/// its plan, or the refusal).
pub fn method_of<P, R, E>(
    ifunc: Option<E>,
    padded: impl FnOnce() -> Option<Result<P, E>>,
    rewrite: impl FnOnce() -> Result<R, E>,
) -> Result<Method<P, R>, E> {
    if let Some(refused) = ifunc {
        return Err(refused);
    }
    match padded() {
        Some(site) => site.map(Method::Padded),
        None => rewrite().map(Method::Rewrite),
    }
}
