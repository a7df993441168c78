pub mod bench;
pub mod bisect;
pub mod common;
pub mod diff;
pub mod inspect;
pub mod noisy;
pub mod run;
pub mod trace;
