"""Kernel overhead benchmark (issue: RayFlow core).

1. Ray sampler overhead per step, excluding the model, relative to one forward of a UNet at SD1.5
   latent size (4x64x64, batch 1). The UNet is diffusers' UNet2DConditionModel with the SD1.5
   configuration and random weights (``--unet small`` uses a 4x smaller-width UNet for a quick run).
2. Time Sampler update cost (sample timesteps + SVGD loss + backward + optimizer step) relative to
   one training step of a small UNet (about 1M parameters, 16x16 latents, batch 64).

Both numbers are ratios measured in one run on the same machine. Usage::

    python -m bench.kernels [--unet sd15|small] [--repeats N] [--json OUT]
"""

from __future__ import annotations

import argparse
import time

import torch

from rayflow import LossProfile, NoiseSchedule, RayProcess, TimeSampler, sample_ray_sigma
from rayflow.atomic_write import write_json

SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SMALL_SD = dict(SD15, block_out_channels=(64, 128, 256, 256), attention_head_dim=4)
TINY = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def sampler_overhead(unet_cfg: dict, repeats: int) -> dict:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_cfg).eval()
    params = sum(p.numel() for p in unet.parameters())
    x = torch.randn(1, 4, 64, 64)
    ctx = torch.randn(1, 77, unet_cfg["cross_attention_dim"])
    with torch.no_grad():
        t_unet = best_of(lambda: unet(x, 999, encoder_hidden_states=ctx).sample, max(1, repeats // 5))
    del unet

    sched = NoiseSchedule.scaled_linear()
    steps = 50
    sigmas = sched.ray_sigmas(steps)
    denoised = torch.randn(1, 4, 64, 64)
    mu = torch.randn(1, 4, 64, 64)

    def free_model(x, sigma, **_):     # the model costs nothing: what remains is the sampler itself
        return denoised

    start = x * float(sigmas[0])
    for eta in (0.0, 1.0):
        proc = RayProcess(sigma=0.3)
        t = best_of(lambda: sample_ray_sigma(free_model, start, sigmas, process=proc, eps_mu=mu, eta=eta,
                                             disable=True, extra_args={"seed": 0}), repeats)
        if eta == 0.0:
            t_det = t / steps
        else:
            t_sto = t / steps
    return {"unet_params_M": params / 1e6, "unet_forward_s": t_unet, "ray_step_s_eta0": t_det,
            "ray_step_s_eta1": t_sto, "overhead_eta0": t_det / t_unet, "overhead_eta1": t_sto / t_unet}


def time_sampler_overhead(repeats: int) -> dict:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY)
    params = sum(p.numel() for p in unet.parameters())
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    B = 64
    x = torch.randn(B, 4, 16, 16)
    ctx = torch.randn(B, 8, 32)
    target = torch.randn(B, 4, 16, 16)

    def unet_step():
        t = torch.randint(0, 1000, (B,))
        loss = (unet(x, t, encoder_hidden_states=ctx).sample - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    ts = TimeSampler(in_features=4 * 4 + 32)
    ts_opt = torch.optim.Adam(ts.parameters(), lr=1e-3)
    profile = LossProfile()
    feats = torch.randn(B, 4 * 4 + 32)

    def ts_update():
        t, w = ts.sample(feats, 1000)
        loss = torch.rand(B)
        profile.update((t.double() + 0.5) / 1000, loss)
        ts_opt.zero_grad()
        ts.svgd_loss(feats, profile.score).backward()
        ts_opt.step()

    t_unet = best_of(unet_step, max(3, repeats // 4))
    t_ts = best_of(ts_update, repeats)
    return {"small_unet_params_M": params / 1e6, "unet_train_step_s": t_unet, "time_sampler_update_s": t_ts,
            "ratio": t_ts / t_unet}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unet", choices=["sd15", "small"], default="sd15",
                    help="UNet for the sampler-overhead reference (sd15: the full SD1.5 configuration)")
    ap.add_argument("--repeats", type=int, default=20, help="timed repetitions (best is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = {"torch_threads": torch.get_num_threads(),
           "sampler": sampler_overhead(SD15 if args.unet == "sd15" else SMALL_SD, args.repeats),
           "time_sampler": time_sampler_overhead(args.repeats)}
    s, t = res["sampler"], res["time_sampler"]
    print("| measurement | value |\n|---|---|")
    print(f"| UNet ({s['unet_params_M']:.0f} M params) forward, 4x64x64, batch 1 | {s['unet_forward_s'] * 1e3:.0f} ms |")
    print(f"| Ray sampler step, model excluded, eta=0 | {s['ray_step_s_eta0'] * 1e6:.0f} us ({100 * s['overhead_eta0']:.3f}% of a forward) |")
    print(f"| Ray sampler step, model excluded, eta=1 | {s['ray_step_s_eta1'] * 1e6:.0f} us ({100 * s['overhead_eta1']:.3f}% of a forward) |")
    print(f"| small UNet ({t['small_unet_params_M']:.2f} M params) training step, 16x16, batch 64 | {t['unet_train_step_s'] * 1e3:.0f} ms |")
    print(f"| Time Sampler update (sample + SVGD loss + step) | {t['time_sampler_update_s'] * 1e3:.1f} ms ({100 * t['ratio']:.1f}% of a training step) |")
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
