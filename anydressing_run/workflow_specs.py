"""The shipped workflows, written once as API graphs; ``make_workflows`` renders each to both file formats.

Defaults follow the paper where it speaks [paper]: lambda (strength) 0.7, one guidance scale 6.0, DDIM with
30 steps (ComfyUI sampler "ddim", scheduler "ddim_uniform"), 576x768 output (3:4). Everything else is a
[choice]: garments encoded at 384x512, the negative prompt, denoise values of the photo workflows.
Titles matter: the runner finds prompts, pictures and outputs by them (see ``anydressing_run.run``).
"""

from __future__ import annotations

from pathlib import Path

from .errors import RunnerError
from .graph import GraphBuilder

API_DIR = Path(__file__).resolve().parents[1] / "workflows" / "api"

WIDTH, HEIGHT = 576, 768  # [paper] 768x576 portrait
STEPS, CFG, STRENGTH = 30, 6.0, 0.7  # [paper]
SAMPLER, SCHEDULER = "ddim", "ddim_uniform"  # [paper] DDIM
SEED = 42
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
NEGATIVE = "lowres, blurry, bad anatomy, bad hands, extra limbs, deformed clothes, watermark, text"

# Sample pictures: workflows/inputs/anydressing/<file>, uploaded into the server's input/anydressing/ (see
# workflows/README.md); the workflows name them as "anydressing/<file>", which is what LoadImage lists.
SAMPLE_SUBFOLDER = "anydressing"
SAMPLES_DIR = API_DIR.parent / "inputs" / SAMPLE_SUBFOLDER
SAMPLE_FILES = {"upper": "upper.png", "lower": "lower.png", "hat": "hat.png", "person": "person.png",
                "person_mask": "person_mask.png", "pose": "pose.png", "face": "face.png"}
# LoadImage titles -> the sample each one shows (garment loaders are titled "Garment image: <slot>")
PHOTO_SAMPLES = {"Person photo": "person", "Clothing mask": "person_mask", "Subject photo": "person",
                 "Pose image": "pose", "Face photo": "face"}


def sample(key: str) -> str:
    """The LoadImage value of a sample picture, e.g. ``anydressing/upper.png``."""
    return f"{SAMPLE_SUBFOLDER}/{SAMPLE_FILES[key]}"

APPLY_DEFAULTS = dict(strength=STRENGTH, start_percent=0.0, end_percent=1.0, form="auto",
                      cfg_policy="garments in positive only (paper)")

# Workflows whose nodes come from other packs: shipped, documented, excluded from the end-to-end runs.
THIRD_PARTY = {"anydressing_ipadapter_faceid": "ComfyUI_IPAdapter_plus (cubiq)"}


def _garments(g, ckpt, slots, size=(384, 512), clip=False):
    """LoadImage + AnyDressingGarment chain for ``slots``, then Encode Garments at ``size``; returns the features
    node. ``clip``: the checkpoint's CLIP goes in too (SDXL's garment pass reads the empty prompt's pooled embedding)."""
    chain = None
    for slot in slots:
        img = g.add("LoadImage", f"Garment image: {slot}", image=sample(slot))
        extra = {"garments": chain} if chain is not None else {}
        chain = g.add("AnyDressingGarment", f"Garment: {slot}", image=img, slot=slot, weight=1.0, **extra)
    extra = {"clip": ckpt[1]} if clip else {}
    return g.add("AnyDressingEncodeGarments", "Encode Garments", model=ckpt[0], vae=ckpt[2], garments=chain,
                 width=size[0], height=size[1], **extra)


def _finish(g, ckpt, model, clip, positive, negative, latent, denoise=1.0, name="result", decode_to=None):
    """Sampler, decode, save; plus the garment attention maps picture. Returns the decoded image node."""
    sampler = g.add("KSampler", "Sampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name=SAMPLER,
                    scheduler=SCHEDULER, positive=positive, negative=negative, latent_image=latent, denoise=denoise)
    image = g.add("VAEDecode", "Decode", samples=sampler, vae=ckpt[2])
    if decode_to is not None:
        image = decode_to(image)
    g.add("SaveImage", "Save: result", images=image, filename_prefix=f"AnyDressing/{name}")
    maps = g.add("AnyDressingAttentionMaps", "Garment attention maps", model=model, positive=positive,
                 latent=sampler, at_percent=0.5, seed=SEED)
    g.add("SaveImage", "Save: attention maps", images=maps[0], filename_prefix=f"AnyDressing/{name}_attention")
    return image


def _text(g, clip, prompt):
    pos = g.add("CLIPTextEncode", "Positive prompt", text=prompt, clip=clip)
    neg = g.add("CLIPTextEncode", "Negative prompt", text=NEGATIVE, clip=clip)
    return pos, neg


def _text_to_image(name, slots, prompt):
    g = GraphBuilder()
    ckpt = g.add("CheckpointLoaderSimple", "Checkpoint", ckpt_name=CHECKPOINT)
    features = _garments(g, ckpt, slots)
    model = g.add("AnyDressingApply", "Apply AnyDressing", model=ckpt[0], features=features, **APPLY_DEFAULTS)
    pos, neg = _text(g, ckpt[1], prompt)
    latent = g.add("EmptyLatentImage", "Output size", width=WIDTH, height=HEIGHT, batch_size=1)
    _finish(g, ckpt, model, ckpt[1], pos, neg, latent, name=name)
    return g.graph


def single_garment():
    return _text_to_image("single", ["upper"],
                          "a full-body photo of a woman wearing a t-shirt, standing, plain studio background")


def upper_lower_hat():
    return _text_to_image("outfit", ["upper", "lower", "hat"],
                          "a full-body photo of a man wearing a t-shirt, trousers and a hat, standing, "
                          "plain studio background")


def lora():
    g = GraphBuilder()
    ckpt = g.add("CheckpointLoaderSimple", "Checkpoint", ckpt_name=CHECKPOINT)
    lora = g.add("LoraLoader", "LoRA", model=ckpt[0], clip=ckpt[1], lora_name="your_sd15_style_lora.safetensors",
                 strength_model=0.8, strength_clip=0.8)
    # [choice] garments are encoded by the base model (GarmentsNet = base UNet); the LoRA styles DressingNet only.
    features = _garments(g, ckpt, ["upper", "lower"])
    model = g.add("AnyDressingApply", "Apply AnyDressing", model=lora[0], features=features, **APPLY_DEFAULTS)
    pos, neg = _text(g, lora[1], "a full-body photo of a woman wearing a t-shirt and trousers, in a park")
    latent = g.add("EmptyLatentImage", "Output size", width=WIDTH, height=HEIGHT, batch_size=1)
    _finish(g, ckpt, model, lora[1], pos, neg, latent, name="lora")
    return g.graph


def openpose_controlnet():
    g = GraphBuilder()
    ckpt = g.add("CheckpointLoaderSimple", "Checkpoint", ckpt_name=CHECKPOINT)
    features = _garments(g, ckpt, ["upper", "lower"])
    model = g.add("AnyDressingApply", "Apply AnyDressing", model=ckpt[0], features=features, **APPLY_DEFAULTS)
    pos, neg = _text(g, ckpt[1], "a full-body photo of a woman wearing a t-shirt and trousers, plain background")
    control = g.add("ControlNetLoader", "OpenPose ControlNet", control_net_name="control_v11p_sd15_openpose.pth")
    pose = g.add("LoadImage", "Pose image", image=sample("pose"))
    applied = g.add("ControlNetApplyAdvanced", "Apply pose", positive=pos, negative=neg, control_net=control,
                    image=pose, strength=1.0, start_percent=0.0, end_percent=1.0)
    latent = g.add("EmptyLatentImage", "Output size", width=WIDTH, height=HEIGHT, batch_size=1)
    _finish(g, ckpt, model, ckpt[1], applied[0], applied[1], latent, name="openpose")
    return g.graph


def ipadapter_faceid():
    """Needs ComfyUI_IPAdapter_plus and its FaceID models (insightface); IP-Adapter acts on attn2 (text
    cross-attention), AnyDressing on attn1, so the two stack [paper: compatible with IP-Adapter-FaceID]."""
    g = GraphBuilder()
    ckpt = g.add("CheckpointLoaderSimple", "Checkpoint", ckpt_name=CHECKPOINT)
    loader = g.add("IPAdapterUnifiedLoaderFaceID", "IPAdapter FaceID loader (ComfyUI_IPAdapter_plus)",
                   model=ckpt[0], preset="FACEID PLUS V2", lora_strength=0.6, provider="CPU")
    face = g.add("LoadImage", "Face photo", image=sample("face"))
    faceid = g.add("IPAdapterFaceID", "IPAdapter FaceID (ComfyUI_IPAdapter_plus)", model=loader[0],
                   ipadapter=loader[1], image=face, weight=0.85, weight_faceidv2=1.0, weight_type="linear",
                   combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    features = _garments(g, ckpt, ["upper", "lower"])
    model = g.add("AnyDressingApply", "Apply AnyDressing", model=faceid[0], features=features, **APPLY_DEFAULTS)
    pos, neg = _text(g, ckpt[1], "a photo of a woman wearing a t-shirt and trousers, looking at the camera")
    latent = g.add("EmptyLatentImage", "Output size", width=WIDTH, height=HEIGHT, batch_size=1)
    _finish(g, ckpt, model, ckpt[1], pos, neg, latent, name="faceid")
    return g.graph


def _photo(g, title):
    img = g.add("LoadImage", title, image=sample(PHOTO_SAMPLES[title]))
    return g.add("ImageScale", f"Resize: {title.lower()}", image=img, upscale_method="bicubic", width=WIDTH,
                 height=HEIGHT, crop="center")


def tryon_inpaint():
    """A GIVEN person photo: only the masked clothing area is regenerated, by the dressed model."""
    g = GraphBuilder()
    ckpt = g.add("CheckpointLoaderSimple", "Checkpoint", ckpt_name=CHECKPOINT)
    features = _garments(g, ckpt, ["upper", "lower"])
    model = g.add("AnyDressingApply", "Apply AnyDressing", model=ckpt[0], features=features, **APPLY_DEFAULTS)
    person = _photo(g, "Person photo")
    mask_img = _photo(g, "Clothing mask")
    mask = g.add("ImageToMask", "Mask from red channel", image=mask_img, channel="red")
    grown = g.add("GrowMask", "Grow mask", mask=mask, expand=8, tapered_corners=True)
    pos, neg = _text(g, ckpt[1], "a photo of a person wearing a t-shirt and trousers")
    encoded = g.add("VAEEncode", "Encode person", pixels=person, vae=ckpt[2])
    latent = g.add("SetLatentNoiseMask", "Inpaint only the mask", samples=encoded, mask=grown)

    def keep_outside(image):  # pixels outside the mask stay exactly the input photo's
        return g.add("ImageCompositeMasked", "Paste into the photo", destination=person, source=image, x=0, y=0,
                     resize_source=False, mask=grown)

    # [choice] denoise 1.0 inside the mask: the old garment must not shine through.
    _finish(g, ckpt, model, ckpt[1], pos, neg, latent, denoise=1.0, name="tryon", decode_to=keep_outside)
    return g.graph


def img2img_keep_subject():
    """img2img: the subject photo's layout, pose and colours survive at denoise 0.6 [choice]."""
    g = GraphBuilder()
    ckpt = g.add("CheckpointLoaderSimple", "Checkpoint", ckpt_name=CHECKPOINT)
    features = _garments(g, ckpt, ["upper", "lower"])
    model = g.add("AnyDressingApply", "Apply AnyDressing", model=ckpt[0], features=features, **APPLY_DEFAULTS)
    subject = _photo(g, "Subject photo")
    pos, neg = _text(g, ckpt[1], "a photo of the same person wearing a t-shirt and trousers")
    latent = g.add("VAEEncode", "Encode subject", pixels=subject, vae=ckpt[2])
    _finish(g, ckpt, model, ckpt[1], pos, neg, latent, denoise=0.6, name="img2img")
    return g.graph


WORKFLOWS = {
    "anydressing_single_garment": (single_garment, "One garment (a top) on a generated person."),
    "anydressing_upper_lower_hat": (upper_lower_hat, "Top, trousers and hat at once (the paper's multi-garment case)."),
    "anydressing_lora": (lora, "With a style LoRA on the sampling model (replace the LoRA file name)."),
    "anydressing_openpose_controlnet": (openpose_controlnet, "Pose from an OpenPose ControlNet image."),
    "anydressing_ipadapter_faceid": (ipadapter_faceid, "Face identity from IP-Adapter FaceID. NEEDS the third-party "
                                     "pack ComfyUI_IPAdapter_plus and its FaceID models."),
    "anydressing_tryon_inpaint": (tryon_inpaint, "Try-on of a GIVEN person photo: only the masked clothing is "
                                  "repainted (mask: white = clothes to replace)."),
    "anydressing_img2img_keep_subject": (img2img_keep_subject, "img2img that keeps the subject of a photo and "
                                         "dresses it."),
}


def short_name(name: str) -> str:
    """``anydressing_upper_lower_hat`` -> ``upper_lower_hat``: the name users type."""
    return name.removeprefix("anydressing_")


def resolve_workflow(ref: str) -> Path:
    """An API workflow file: ``ref`` itself when it is a path, else a shipped workflow by (short) name."""
    path = Path(ref)
    if path.suffix == ".json" or path.exists():
        return path
    for name in (ref, f"anydressing_{ref}"):
        candidate = API_DIR / f"{name}.json"
        if candidate.is_file():
            return candidate
    raise RunnerError(f"no workflow {ref!r}: not a file, and not one of: " + ", ".join(map(short_name, WORKFLOWS)))


# --- SDXL ------------------------------------------------------------------------------------------------------
# [choice] SDXL's 832x1216 portrait bucket; garments at 768x1024 give SDXL's first attention level (1/16 of the
# pixels) 48x64 tokens per garment, what 384x512 gives SD1.5's (1/8). The paper's sampler settings are kept.
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
SDXL_WIDTH, SDXL_HEIGHT = 832, 1216
SDXL_GARMENT_SIZE = (768, 1024)
# [choice] at most 4096 garment tokens per layer (one 1024 px garment's first level): three garments pool that
# level 2x2 and keep the deeper ones whole (docs/SDXL.md has the cost and fidelity figures).
SDXL_TOKEN_BUDGET = 4096
SDXL_CONTROLNET = "OpenPoseXL2.safetensors"
SDXL_NOTE = """# {title}

{description}

**AnyDressing** (Li et al., CVPR 2025) dresses the generated person in every garment of the
*Garment* chain, here on an **SDXL-family** checkpoint (SDXL, Pony, Illustrious, Juggernaut, ...).
Sampler settings follow the paper: strength (lambda) 0.7, cfg 6, DDIM 30 steps; 832x1216 output.

- Put your SDXL checkpoint in the *Checkpoint* node and your garment pictures in the *Garment image* nodes
  (plain background or transparent PNG). Its CLIP goes to *Encode Garments* too (SDXL's garment pass reads
  the empty prompt's pooled embedding).
- The pictures named here (`anydressing/...png`) are the pack's samples in `workflows/inputs/anydressing/`:
  upload them into ComfyUI's `input/anydressing/` to run it as it is (see the pack's `workflows/README.md`).
- *Apply AnyDressing* keeps at most 4096 garment tokens per layer (garment_token_budget; 0 = all).
- *Garment attention maps* shows where each garment lands, one colour per garment, with a colour scale.
{extra}"""


def _sdxl(name, slots, prompt, pose=False):
    g = GraphBuilder()
    ckpt = g.add("CheckpointLoaderSimple", "Checkpoint", ckpt_name=SDXL_CHECKPOINT)
    features = _garments(g, ckpt, slots, SDXL_GARMENT_SIZE, clip=True)
    model = g.add("AnyDressingApply", "Apply AnyDressing", model=ckpt[0], features=features,
                  garment_token_budget=SDXL_TOKEN_BUDGET, **APPLY_DEFAULTS)
    pos, neg = _text(g, ckpt[1], prompt)
    if pose:
        control = g.add("ControlNetLoader", "OpenPose ControlNet (SDXL)", control_net_name=SDXL_CONTROLNET)
        image = g.add("LoadImage", "Pose image", image=sample("pose"))
        applied = g.add("ControlNetApplyAdvanced", "Apply pose", positive=pos, negative=neg, control_net=control,
                        image=image, strength=1.0, start_percent=0.0, end_percent=1.0)
        pos, neg = applied[0], applied[1]
    latent = g.add("EmptyLatentImage", "Output size", width=SDXL_WIDTH, height=SDXL_HEIGHT, batch_size=1)
    _finish(g, ckpt, model, ckpt[1], pos, neg, latent, name=name)
    return g.graph


def sdxl_upper_lower_hat():
    return _sdxl("sdxl_outfit", ["upper", "lower", "hat"],
                 "a full-body photo of a man wearing a t-shirt, trousers and a hat, standing, plain studio background")


def sdxl_openpose_controlnet():
    return _sdxl("sdxl_openpose", ["upper", "lower"],
                 "a full-body photo of a woman wearing a t-shirt and trousers, plain background", pose=True)


SDXL_WORKFLOWS = {
    "anydressing_sdxl_upper_lower_hat": (sdxl_upper_lower_hat, "SDXL: top, trousers and hat at once, 832x1216."),
    "anydressing_sdxl_openpose_controlnet": (sdxl_openpose_controlnet, "SDXL: pose from an OpenPose ControlNet for "
                                             "SDXL (replace the ControlNet file name), 832x1216."),
}
WORKFLOWS.update(SDXL_WORKFLOWS)
