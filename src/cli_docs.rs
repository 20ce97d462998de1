//! Files generated from the command line's definition: the manual page
//! (`artifact-mirror manpage`) and shell completions (`completions SHELL`).

use roff::{roman, Roff};

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, mut cmd: clap::Command) -> Vec<u8> {
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, &name, &mut out);
    if shell == clap_complete::Shell::Bash {
        // clap_complete's bash script spells its states two ways for a name
        // with a hyphen: the loop reaches `artifact__mirror__subcmd__cache`,
        // the arms say `artifact__subcmd__mirror__subcmd__cache`, so nothing
        // past the first word completes (clap-rs/clap#6421, open). The
        // loop's spelling is the one its top-level arm uses.
        let broken = name.replace('-', "__subcmd__");
        let fixed = name.replace('-', "__");
        out = String::from_utf8_lossy(&out)
            .replace(&broken, &fixed)
            .into_bytes();
    }
    out
}

/// The manual page for `cmd`, roff source: one page for the whole command
/// line. clap_mangen renders one page per command and points at the others
/// (`artifact-mirror-serve(1)`…); an operator installing a single file wants
/// every subcommand's options in it, so the top command's page ends with a
/// COMMANDS section holding each subcommand's help.
pub fn manpage(cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Fills in the bin names ("artifact-mirror cache gc") used below.
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    commands(&mut roff, &mut cmd);
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Each subcommand, depth first: its full name, then its `--help` as
/// preformatted text.
fn commands(roff: &mut Roff, cmd: &mut clap::Command) {
    for sub in cmd.get_subcommands_mut() {
        let name = sub
            .get_bin_name()
            .unwrap_or_else(|| sub.get_name())
            .to_owned();
        roff.control("SS", [name.as_str()]);
        roff.control("nf", []);
        for line in sub.render_long_help().to_string().lines() {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
        if sub.has_subcommands() {
            commands(roff, sub);
        }
    }
}
