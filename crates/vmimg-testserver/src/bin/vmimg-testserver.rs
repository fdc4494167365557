//! `vmimg-testserver --dir DIR [--port N]`: serves DIR on 127.0.0.1 and
//! prints its base URL as the first line of stdout (for benchmarks and
//! manual tests).

use std::io::Write;
use vmimg_testserver::TestServer;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut port) = (None, 0u16);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--dir", Some(value)) => dir = Some(value),
            ("--port", Some(value)) => port = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let dir = dir.unwrap_or_else(|| usage());
    let server = TestServer::start_on(port).unwrap_or_else(|e| {
        eprintln!("vmimg-testserver: cannot listen: {e}");
        std::process::exit(1)
    });
    server.serve_dir("/", dir);
    println!("{}", server.base_url());
    std::io::stdout().flush().expect("stdout");
    server.wait();
}

fn usage() -> ! {
    eprintln!("usage: vmimg-testserver --dir DIR [--port N]");
    std::process::exit(2)
}
