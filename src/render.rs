//! `credbridge render`: what `run` would do, every credential value redacted.

use std::io::{self, Write};

use crate::cli::Delivery;
use crate::oem::{Form, Origin};
use crate::plan::{FdNames, Plan};

pub fn render(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let fds = FdNames {
        api: "<api>".into(),
        events: plan.own_event_monitor.then(|| "<events>".into()),
    };
    writeln!(
        out,
        "hypervisor:   cloud-hypervisor ({})",
        plan.program.to_string_lossy()
    )?;
    let delivery = match plan.delivery {
        Delivery::Api => "api (PUT vm.create on the private API socket; nothing secret in argv)",
        Delivery::Argv => "argv (--platform oem_strings=[...]; visible in the process list)",
    };
    writeln!(out, "delivery:     {delivery}")?;
    writeln!(out, "credentials:  {}", plan.credential_count)?;
    writeln!(
        out,
        "SMBIOS:       type 11 entry of {} bytes, budget {} (--smbios-budget); {} strings of at most 255",
        plan.entry_size(),
        plan.budget,
        plan.strings.len()
    )?;
    writeln!(out, "OEM strings:")?;
    writeln!(
        out,
        "  {:>3}  {:<10}  {:<24}  {:<6}  {:>6}  string",
        "#", "source", "guest name", "form", "bytes"
    )?;
    for (i, s) in plan.strings.iter().enumerate() {
        let (source, form) = match &s.origin {
            Origin::Argv => ("argv", "-"),
            Origin::Flag => ("flag", "-"),
            Origin::Credbridge => ("credbridge", "-"),
            Origin::Credential { form, .. } => (
                "credential",
                match form {
                    Form::Binary => "binary",
                    Form::Plain => "plain",
                },
            ),
        };
        writeln!(
            out,
            "  {:>3}  {:<10}  {:<24}  {:<6}  {:>6}  {}",
            i + 1,
            source,
            s.guest_name.as_deref().unwrap_or("-"),
            form,
            s.len(),
            s.redacted()
        )?;
    }
    let args = plan
        .redacted_child_args(&fds)
        .map_err(|e| io::Error::other(e.to_string()))?;
    writeln!(out, "argv:")?;
    writeln!(out, "  {} {}", plan.argv0.to_string_lossy(), args.join(" "))?;
    if let Some(create) = &plan.create {
        writeln!(out, "PUT /api/v1/vm.create:")?;
        for line in create.redacted_json(&plan.strings).lines() {
            writeln!(out, "  {line}")?;
        }
        for (net, fds) in &create.add_nets {
            writeln!(
                out,
                "PUT /api/v1/vm.add-net with fds {fds:?} as SCM_RIGHTS: {net}"
            )?;
        }
        for (dev, fd) in &create.add_devices {
            writeln!(
                out,
                "PUT /api/v1/vm.add-device with fd {fd} as SCM_RIGHTS: {dev}"
            )?;
        }
        writeln!(out, "PUT /api/v1/vm.boot")?;
    }
    for w in &plan.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}
