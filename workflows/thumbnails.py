"""The templates' thumbnails: a workflow's node graph drawn as boxes in rows by depth (sources on top),
RayFlow nodes in orange, under the template's title. Used by ``make_workflows.py``."""

THUMB = 512
SHORT = {"CheckpointLoaderSimple": "Load Checkpoint", "RayFlowLoraLoader": "RayFlow LoRA",
         "CLIPLoader": "Load T5", "VAELoader": "Load VAE", "LoadImage": "Load Image", "VAEEncode": "VAE Encode",
         "VAEDecode": "VAE Decode", "SaveImage": "Save Image", "RandomNoise": "Random Noise", "CFGGuider": "CFG Guider",
         "RayFlowSamplerSelect": "RayFlow SAMPLER", "SamplerCustomAdvanced": "SamplerCustomAdv.",
         "RayFlowTargetMean": "Ray Target Mean", "TripleCLIPLoader": "Load CLIP-L/G + T5",
         "DualCLIPLoader": "Load CLIP-L + T5", "FluxGuidance": "FluxGuidance", "ModelSamplingFlux": "ModelSamplingFlux"}


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _steps(n: int) -> str:
    return f"{n} step" + ("s" if n > 1 else "")


def _label(node: dict) -> str:
    cls, inp = node["class_type"], node["inputs"]
    if cls == "CLIPTextEncode":
        return "Prompt -" if node["_meta"]["title"] == "Negative" else "Prompt +"
    if cls in ("EmptyLatentImage", "EmptySD3LatentImage"):
        return f"Empty Latent {inp['width']}"
    if cls == "UNETLoader":                                # "Load PixArt transformer" -> "Load PixArt"
        return " ".join(node["_meta"]["title"].split()[:2])
    if cls in ("RayFlowSampler", "KSampler"):
        return f"{'RayFlow Sampler' if cls == 'RayFlowSampler' else 'KSampler'} · {_steps(inp['steps'])}"
    if cls == "RayFlowScheduler":
        return f"RayFlow SIGMAS · {_steps(inp['steps'])}"
    return SHORT.get(cls, node["_meta"]["title"])


def _fit(draw, text: str, width: float, size: int, smallest: int = 9):
    from PIL import ImageFont

    while size > smallest and draw.textlength(text, font=ImageFont.load_default(size=size)) > width:
        size -= 1
    return ImageFont.load_default(size=size)


def draw(api: dict, title: str, subtitle: str, stem: str):
    """A 512 px square JPEG-ready image of the API-format graph ``api``: ``title``, ``subtitle`` and the
    node graph, labelled as a diagram (no real model output exists to show); ``stem`` names it at the foot."""
    from PIL import Image, ImageDraw

    depth = {}

    def d(key):
        if key not in depth:
            srcs = [v[0] for v in api[key]["inputs"].values() if _is_link(v)]
            depth[key] = 1 + max((d(s) for s in srcs), default=-1)
        return depth[key]

    rows = {}
    for key in api:
        rows.setdefault(d(key), []).append(key)
    img = Image.new("RGB", (THUMB, THUMB), "#16181d")
    draw = ImageDraw.Draw(img)
    m = 22
    draw.text((m, 16), "RayFlow", fill="#f0913a", font=_fit(draw, "RayFlow", 200, 20))
    draw.text((m, 42), title, fill="#f2f3f5", font=_fit(draw, title, THUMB - 2 * m, 34))
    draw.text((m, 86), subtitle, fill="#b4b9c3", font=_fit(draw, subtitle, THUMB - 2 * m, 19))
    top, bottom, gap = 126, 474, 10
    row_h = min(64, (bottom - top) / len(rows))
    box_h = min(34, row_h - 18)
    y0 = top + ((bottom - top) - row_h * len(rows)) / 2
    xy = {}
    for r in sorted(rows):
        keys = rows[r]
        if r:                                          # parents' mean x, to keep the edges short
            def mean_x(k):
                xs = [xy[v[0]][0] for v in api[k]["inputs"].values() if _is_link(v)]
                return sum(xs) / len(xs)
            keys.sort(key=mean_x)
        w = min(190, (THUMB - 2 * m - gap * (len(keys) - 1)) / len(keys))
        x = (THUMB - (w * len(keys) + gap * (len(keys) - 1))) / 2
        for k in keys:
            xy[k] = (x + w / 2, y0 + r * row_h, w)
            x += w + gap
    for k, n in api.items():                            # edges first, under the boxes
        for v in n["inputs"].values():
            if _is_link(v):
                sx, sy, _ = xy[v[0]]
                dx, dy, _ = xy[k]
                draw.line([(sx, sy + box_h), (dx, dy)], fill="#5d6470", width=2)
    for k, (cx, y, w) in xy.items():
        ours = api[k]["class_type"].startswith("RayFlow")
        draw.rounded_rectangle([cx - w / 2, y, cx + w / 2, y + box_h], radius=6,
                               fill="#e8852a" if ours else "#2f3541", outline="#f5b06a" if ours else "#4a5261")
        text = _label(api[k])
        font = _fit(draw, text, w - 10, 15)
        draw.text((cx, y + box_h / 2), text, fill="#1a1205" if ours else "#e4e7ec", font=font, anchor="mm")
    foot = f"{stem} · node graph, not a generated image"
    draw.text((m, THUMB - 26), foot, fill="#7b818c", font=_fit(draw, foot, THUMB - 2 * m, 14))
    return img
