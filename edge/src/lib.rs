//! `edge`: the device application. The library part is the live pipeline ([`live`]) that
//! `edge run` drives; the shared contracts, the tract runtime and the evaluation lab live in the
//! `fss-core`, `fss-runtime` and `fss-lab` crates (README, "Architecture").

pub mod live;
