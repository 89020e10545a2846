"""Convert between the API format (what ``/prompt`` takes) and the UI format (what the editor loads).

Both directions read node schemas from ``GET /object_info``. The editor's rules for ``widgets_values``
(measured on frontend 1.27, see tests/e2e): one value per widget input in schema order (required, then
optional); an INT input gets a second "control after generate" value right after it when its options say
``control_after_generate`` or, by legacy convention, when it is named ``seed``/``noise_seed``; a combo with
``image_upload`` gets an extra trailing "image" value (the upload button). Socket inputs (non-widget types,
or ``forceInput``) are serialized in ``inputs`` with their link id.
"""

from __future__ import annotations

from .graph import is_link

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # editor-only, never in the API graph

# Schemas of third-party nodes used by shipped workflows (read from ComfyUI_IPAdapter_plus's INPUT_TYPES,
# 2025-02), so their UI files can be written on a server that does not have that pack.
_WEIGHT_TYPES = ["linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                 "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
                 "style and composition", "style transfer precise", "composition precise"]
EXTRA_SCHEMAS = {
    "IPAdapterUnifiedLoaderFaceID": {
        "display_name": "IPAdapter Unified Loader FaceID",
        "input": {"required": {"model": ["MODEL", {}],
                               "preset": [["FACEID", "FACEID PLUS - SD1.5 only", "FACEID PLUS V2",
                                           "FACEID PORTRAIT (style transfer)",
                                           "FACEID PORTRAIT UNNORM - SDXL only (strong)"], {}],
                               "lora_strength": ["FLOAT", {"default": 0.6, "min": 0, "max": 1, "step": 0.01}],
                               "provider": [["CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML"], {}]},
                  "optional": {"ipadapter": ["IPADAPTER", {}]}},
        "input_order": {"required": ["model", "preset", "lora_strength", "provider"], "optional": ["ipadapter"]},
        "output": ["MODEL", "IPADAPTER"], "output_name": ["MODEL", "ipadapter"],
    },
    "IPAdapterFaceID": {
        "display_name": "IPAdapter FaceID",
        "input": {"required": {"model": ["MODEL", {}], "ipadapter": ["IPADAPTER", {}], "image": ["IMAGE", {}],
                               "weight": ["FLOAT", {"default": 1.0}], "weight_faceidv2": ["FLOAT", {"default": 1.0}],
                               "weight_type": [_WEIGHT_TYPES, {}],
                               "combine_embeds": [["concat", "add", "subtract", "average", "norm average"], {}],
                               "start_at": ["FLOAT", {"default": 0.0}], "end_at": ["FLOAT", {"default": 1.0}],
                               "embeds_scaling": [["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"], {}]},
                  "optional": {"image_negative": ["IMAGE", {}], "attn_mask": ["MASK", {}],
                               "clip_vision": ["CLIP_VISION", {}], "insightface": ["INSIGHTFACE", {}]}},
        "input_order": {"required": ["model", "ipadapter", "image", "weight", "weight_faceidv2", "weight_type",
                                     "combine_embeds", "start_at", "end_at", "embeds_scaling"],
                        "optional": ["image_negative", "attn_mask", "clip_vision", "insightface"]},
        "output": ["MODEL", "IMAGE"], "output_name": ["MODEL", "face_image"],
    },
}


def schema(object_info: dict, class_type: str) -> dict:
    info = object_info.get(class_type) or EXTRA_SCHEMAS.get(class_type)
    if info is None:
        raise KeyError(f"no schema for node type {class_type!r} (not on this server, not a known third-party node)")
    return info


def ordered_inputs(info: dict) -> list:
    """``[(name, type, options)]`` in the editor's order: required, then optional (``input_order`` if given)."""
    out = []
    for section in ("required", "optional"):
        spec = (info.get("input") or {}).get(section) or {}
        names = (info.get("input_order") or {}).get(section) or list(spec)
        for name in names:
            entry = spec[name]
            typ = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            out.append((name, typ, opts))
    return out


def is_widget(typ, opts) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in WIDGET_TYPES


def extra_values(name, typ, opts) -> list:
    """Values the editor stores after this widget's own value."""
    if typ == "INT":
        control = opts.get("control_after_generate")
        if control if control is not None else name in ("seed", "noise_seed"):
            return ["fixed"]
    if (isinstance(typ, list) or typ == "COMBO") and opts.get("control_after_generate"):
        return ["fixed"]
    return []


def widget_default(typ, opts):
    """The value a fresh editor widget holds: the ``default`` option, else the first combo choice."""
    if "default" in opts:
        return opts["default"]
    if isinstance(typ, list):
        return typ[0] if typ else None
    if typ == "COMBO" and opts.get("options"):
        return opts["options"][0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(typ)


def complete_widgets(graph: dict, object_info: dict) -> dict:
    """Fill every widget input a graph leaves out with its default, as the editor's "Export (API)" does."""
    for node in graph.values():
        info = schema(object_info, node["class_type"])
        for name, typ, opts in ordered_inputs(info):
            if is_widget(typ, opts) and name not in node["inputs"]:
                node["inputs"][name] = widget_default(typ, opts)
    return graph


def _type_name(typ) -> str:
    return "COMBO" if isinstance(typ, list) else typ


def _layout(graph: dict) -> dict:
    """Column = longest path from a source node; within a column, nodes in id order. ``{node_id: (col, index)}``."""
    depth = {}

    def d(nid, seen=()):
        if nid in depth:
            return depth[nid]
        parents = [v[0] for v in graph[nid]["inputs"].values() if is_link(v) and v[0] not in seen]
        depth[nid] = 0 if not parents else 1 + max(d(p, seen + (nid,)) for p in parents)
        return depth[nid]

    rows = {}
    place = {}
    for nid in sorted(graph, key=lambda k: (d(k), int(k) if k.isdigit() else 0)):
        col = depth[nid]
        place[nid] = (col, rows.get(col, 0))
        rows[col] = rows.get(col, 0) + 1
    return place


def _height(class_type: str, sockets: int, widgets: int) -> int:
    """Rough node height in the editor (pixels at zoom 1); pictures get room for their preview."""
    preview = 260 if class_type in ("LoadImage", "LoadImageMask", "SaveImage", "PreviewImage") else 0
    text = 90 if class_type == "CLIPTextEncode" else 0
    return 46 + 22 * (sockets + widgets) + preview + text


def api_to_ui(graph: dict, object_info: dict, note: str | None = None) -> dict:
    """A UI-format workflow for an API graph (node ids kept), laid out left to right by depth."""
    place = _layout(graph)
    nodes, links = [], []
    ui_nodes = {}
    column_top = {}
    order = sorted(graph, key=lambda k: (place[k][0], int(k)))
    for index, nid in enumerate(order):
        node = graph[nid]
        info = schema(object_info, node["class_type"])
        inputs, widgets = [], []
        for name, typ, opts in ordered_inputs(info):
            value = node["inputs"].get(name)
            if is_widget(typ, opts):
                if is_link(value):
                    raise ValueError(f"node {nid}: widget input {name!r} driven by a link is not supported here")
                widgets.append(widget_default(typ, opts) if value is None else value)
                widgets.extend(extra_values(name, typ, opts))
            else:
                inputs.append({"name": name, "type": _type_name(typ), "link": None})
        if any(opts.get("image_upload") for _, _, opts in ordered_inputs(info)):
            widgets.append("image")
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (t, n) in enumerate(zip(info["output"], info.get("output_name") or info["output"]))]
        col, _ = place[nid]
        height = _height(node["class_type"], max(len(inputs), len(outputs)), len(widgets))
        top = column_top.get(col, 40)
        column_top[col] = top + height + 50
        ui = {"id": int(nid), "type": node["class_type"], "pos": [40 + 380 * col, top],
              "size": [330, height], "flags": {}, "order": index, "mode": 0, "inputs": inputs, "outputs": outputs,
              "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets}
        title = (node.get("_meta") or {}).get("title")
        if title:
            ui["title"] = title
        ui_nodes[nid] = ui
        nodes.append(ui)
    link_id = 0
    for nid in order:
        for name, value in graph[nid]["inputs"].items():
            if not is_link(value):
                continue
            src, slot = value
            target = ui_nodes[nid]
            to_slot = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == name)
            link_id += 1
            typ = ui_nodes[src]["outputs"][slot]["type"]
            target["inputs"][to_slot]["link"] = link_id
            ui_nodes[src]["outputs"][slot]["links"].append(link_id)
            links.append([link_id, int(src), slot, int(nid), to_slot, typ])
    last_id = max(int(k) for k in graph)
    if note:
        last_id += 1
        nodes.append({"id": last_id, "type": "MarkdownNote", "pos": [40, -260], "size": [700, 220], "flags": {},
                      "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "title": "About this workflow",
                      "properties": {}, "widgets_values": [note]})
    return {"last_node_id": last_id, "last_link_id": link_id, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [60, 320]}}, "version": 0.4}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API graph the editor would queue for a UI-format workflow (virtual and muted nodes dropped)."""
    links = {link[0]: link for link in workflow.get("links", [])}
    graph = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            continue
        info = schema(object_info, node["type"])
        linked = {inp["name"]: inp.get("link") for inp in node.get("inputs", [])}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        pos = 0
        for name, typ, opts in ordered_inputs(info):
            if is_widget(typ, opts):
                value = values[pos] if pos < len(values) else None
                pos += 1 + len(extra_values(name, typ, opts))
                if linked.get(name) is not None:
                    value = None
                if value is not None:
                    inputs[name] = value
            if linked.get(name) is not None:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        graph[str(node["id"])] = entry
    return graph
