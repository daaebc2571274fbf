"""The whole preflight: machine checks, model checks and the plan, as one report."""

from __future__ import annotations

from dataclasses import dataclass

from routerllm_cli.config import Settings
from routerllm_cli.estimates import Bandwidths
from routerllm_cli.hardware import Check, HardwareReport, machine_checks
from routerllm_cli.plan.availability import model_checks
from routerllm_cli.plan.run import plan_for_run
from routerllm_cli.plan.types import DevicePlan
from routerllm_cli.plan.verdict import dedupe


# --- the whole preflight ---------------------------------------------------------------------------------------


@dataclass
class PreflightReport:
    verdict: str
    reasons: list[str]
    fixes: list[str]
    checks: list[Check]
    plan: DevicePlan
    hardware: HardwareReport

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "reasons": self.reasons, "fixes": self.fixes,
                "checks": [c.to_dict() for c in self.checks], "plan": self.plan.to_dict(),
                "estimates": self.plan.estimates, "hardware": self.hardware.to_dict()}


def sandbox_check(requested: str) -> Check:
    """The layer that will run generated code (`bench` executes every answer), from one real tiny run."""
    from routerllm_cli.sandbox import describe

    d = describe(requested)
    if d.get("layer") is None:
        return Check("sandbox", "fail", d["error"].split(" - fix: ")[0], fix=d["error"].partition(" - fix: ")[2] or None)
    iso = d["isolation"]
    detail = (f"{'bubblewrap ' + str(d['bwrap']['version']) if d['layer'] == 'bwrap' else 'built-in layer'}: "
              f"fs {iso.get('fs')}, net {iso.get('net')}, pid {iso.get('pid')}, ipc {iso.get('ipc')}, "
              f"{iso.get('proc')}")
    if not d["works"]:
        return Check("sandbox", "fail", f"{detail}; a trivial program did not pass ({d['probe']})",
                     fix="set bench.sandbox: builtin, or bench.skip_execution: true")
    if d["layer"] == "bwrap" and iso.get("fs") == "private-root":
        return Check("sandbox", "ok", detail)
    why = f" ({d['bwrap']['reason']})" if d["layer"] != "bwrap" and requested == "auto" else ""
    weak = iso.get("fs") != "private-root" or iso.get("proc") != "seccomp"
    return Check("sandbox", "warn" if weak or why else "ok", detail + why,
                 fix="install bubblewrap (apt-get install bubblewrap) for the stronger layer" if why or weak else None)


def run_preflight(settings: Settings, hardware: HardwareReport, *, batch_size: int | None = None,
                  seq_len: int | None = None, num_examples: int | None = None,
                  bandwidths: Bandwidths | None = None) -> PreflightReport:
    """Every check plus the plan for `settings.large`. The verdict is no-go when the plan is, or a check failed."""
    spec = settings.large
    checks = machine_checks(hardware, offload_folder=spec.offload_folder, quantization=spec.quantization,
                            flash_attention=spec.use_flash_attention, managed_folder=settings.managed_offload_folder())
    if not settings.bench.skip_execution:
        checks.append(sandbox_check(settings.bench.sandbox))
    plan = plan_for_run(settings, "preflight", hardware=hardware, batch_size=batch_size, seq_len=seq_len,
                        num_examples=num_examples, bandwidths=bandwidths)
    checks += model_checks(plan.model, spec, hardware, token=settings.hf_token, checkpoint=plan.checkpoint_bytes)
    if "disk" in plan.devices:
        for c in checks:
            if c.name == "offload_in_use":
                c.status = "fail"
    failed = [c for c in checks if c.status == "fail"]
    reasons = plan.reasons + [c.detail for c in failed if not any(r in c.detail for r in plan.reasons)]
    fixes = dedupe(plan.fixes + [c.fix for c in failed if c.fix])
    return PreflightReport("no-go" if reasons else "go", reasons, fixes, checks, plan, hardware)
