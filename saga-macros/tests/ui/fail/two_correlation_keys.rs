use sagaflow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[message(name = "go")]
struct Go {
    #[correlation]
    order: u32,
    #[correlation]
    user: u32,
}

fn main() {}
