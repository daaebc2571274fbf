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


def run_preflight(settings: Settings, hardware: HardwareReport, *, batch_size: int | None = None,
                  seq_len: int | None = None, num_examples: int | None = None,
                  bandwidths: Bandwidths | None = None) -> PreflightReport:
    """Every check plus the plan for `settings.large`. The verdict is no-go when the plan is, or a check failed."""
    spec = settings.large
    checks = machine_checks(hardware, offload_folder=spec.offload_folder, quantization=spec.quantization,
                            flash_attention=spec.use_flash_attention, managed_folder=settings.managed_offload_folder())
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
