use sagaflow::prelude::*;

#[derive(Message)]
#[message(name = "go")]
struct Go {
    id: u32,
}

fn main() {
    let _ = Go { id: 1 }.id;
}
