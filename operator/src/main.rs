//! `cassette-operator`: the AgentSession controller and admission webhooks.
//!
//! `main` only parses the command line and wires; each subcommand lives in its own module.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod crdgen;

#[derive(Parser)]
#[command(name = "cassette-operator", version, about = "The cassette operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the AgentSession CustomResourceDefinition as YAML.
    Crdgen,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crdgen => {
            print!("{}", crdgen::yaml()?);
            Ok(())
        }
    }
}
