"""The reviewed record of official values behind docs/fidelity.md's "official (source)" column.

Each entry is one value of the official code: the repository, the commit read, the file and line, and the
literal text at that line (whitespace-stripped), as read from the repositories on 2026-12 (HALD @ ffbca04,
CV-DD @ 24097e9 = HEAD and 492fcb1 = v1). tests/pipeline/test_fidelity.py checks the doc against this table
without the network: the row of the named table (`table`: a preset column of its header) and setting holds
`value` in its official cell, with the citation `cite` (a path suffix and line or range that covers `line`).
To change a value here, re-read the line at the commit and copy it: this file is the reviewed record.
"""
from __future__ import annotations

from dataclasses import dataclass

HALD, CVDD = "Jiacheng8/HALD", "Jiacheng8/CV-DD"
HALD_C, HEAD_C, V1_C = "ffbca04", "24097e9", "492fcb1"


@dataclass(frozen=True)
class Official:
    table: str      # a preset column of the table (e.g. `hald_in1k_slc50`)
    setting: str    # the row's first cell
    value: str      # as the doc's official cell writes it
    repo: str
    commit: str
    path: str
    line: int
    text: str       # the literal line at the commit, stripped
    cite: str       # the citation in the doc's cell: a suffix of `path`, ':', a line or range covering `line`


_TRAIN_SH = "validate/scripts/imagenet1k/train.sh"
_TRAIN = "validate/train_fkd.py"
_DEMO = "relabel/scripts/imagenet1k/demo.sh"
_RELABEL = "relabel/relabel_slc.py"


def _hald(table: str) -> list[Official]:
    """HALD's headline rows, the same in the Tiny and the ImageNet-1K tables."""
    return [
        Official(table, "SLC", "100", HALD, HALD_C, _TRAIN_SH, 20, "for slc in 100", "train.sh:20"),
        Official(table, "IPC", "10", HALD, HALD_C, _TRAIN_SH, 22, "for ipc in 10", "train.sh:22"),
        Official(table, "T (soft)", "20", HALD, HALD_C, _TRAIN, 675, "output = F.log_softmax(output / 20, dim=1)",
                 "train_fkd.py:675"),
        Official(table, "T (stored labels)", "20", HALD, HALD_C, _RELABEL, 46,
                 'parser.add_argument("--temperature", type=int, default=20,', "relabel_slc.py:46"),
        Official(table, "label smoothing", "0.8", HALD, HALD_C, _TRAIN, 133,
                 "parser.add_argument('--label-smoothing', type=float, default=0.8,)", "train_fkd.py:133"),
        Official(table, "hard CutMix", "cutmix_alpha 1.0", HALD, HALD_C, _TRAIN, 451, "cutmix_alpha=1.0,",
                 "train_fkd.py:18, 449-454"),
        Official(table, "hard CutMix", "mixup_alpha 0", HALD, HALD_C, _TRAIN, 450, "mixup_alpha=0.0,",
                 "train_fkd.py:18, 449-454"),
        Official(table, "epochs", "300", HALD, HALD_C, _TRAIN_SH, 26, "hard_epochs=$((300 - soft_epochs))",
                 "train.sh:25-26"),
        Official(table, "epochs", "hard 150 + soft 150", HALD, HALD_C, _TRAIN_SH, 25, "soft_epochs=150",
                 "train.sh:25-26"),
        Official(table, "phase split (S6)", "soft 75, hard 150, soft 75", HALD, HALD_C, _TRAIN, 156,
                 "args.epochs_weight = [args.soft_epochs//2, args.hard_epochs,args.soft_epochs-args.soft_epochs//2]",
                 "train_fkd.py:155-157"),
        Official(table, "soft batch", "16", HALD, HALD_C, _TRAIN_SH, 16, "bs=16", "train.sh:16"),
        Official(table, "hard batch", "16", HALD, HALD_C, _TRAIN, 131,
                 "parser.add_argument('--hard-batch-size', type=int, default=16)", "train_fkd.py:131"),
        Official(table, "stored batch", "16", HALD, HALD_C, _DEMO, 31, "-b 16 \\", "demo.sh:31"),
        Official(table, "micro-batches", "--gradient-accumulation-steps 1", HALD, HALD_C, _TRAIN_SH, 54,
                 "--gradient-accumulation-steps 1 \\", "train.sh:54"),
        Official(table, "evaluation cadence", "epoch % 10 == 0", HALD, HALD_C, _TRAIN, 495,
                 "should_validate = (epoch % 10 == 0 or epoch == args.epochs - 1) if not args.simple else "
                 "is_special_epoch(epoch, args.epochs)", "train_fkd.py:495"),
        Official(table, "weight decay", "AdamW 0.01", HALD, HALD_C, _TRAIN, 109,
                 "default=0.01, help='adamw weight decay')", "train_fkd.py:108-109"),
        Official(table, "relabel seed", "--fkd-seed 42", HALD, HALD_C, _DEMO, 35, "--fkd-seed 42 \\", "demo.sh:35"),
    ]


RECORDS: list[Official] = [
    *_hald("hald_tiny_slc50"),
    Official("hald_tiny_slc50", "lr / eta", "IPC 10 [1e-3, 2]", HALD, HALD_C, "validate/hyper.yaml", 29,
             '"10": [0.001, 2]', "hyper.yaml:27-30"),
    Official("hald_tiny_slc50", "runnable as released", "raises for any dataset but ImageNet-1K", HALD, HALD_C,
             "relabel/utils_fkd_reconstruct.py", 465,
             'raise NotImplementedError(f"Online model loading for {args.dataset_name} is not supported yet")',
             "utils_fkd_reconstruct.py:464-465"),
    Official("hald_tiny_slc50", "runnable as released", "validate/train_fkd.py:172", HALD, HALD_C, _TRAIN, 172,
             "args.test_model = load_online_model('ResNet18', args).cuda()", "train_fkd.py:172"),
    *_hald("hald_in1k_slc50"),
    Official("hald_in1k_slc50", "lr / eta", "IPC 10 [1e-3, 2]", HALD, HALD_C, "validate/hyper.yaml", 87,
             '"10": [0.001, 2]', "hyper.yaml:85-91"),
    Official("hald_in1k_slc50", "lr / eta", "IPC 50 [1e-3, 1]", HALD, HALD_C, "validate/hyper.yaml", 91,
             '"50": [0.001, 1]', "hyper.yaml:85-91"),
    # the two citations that were one line off (audit, issue 19)
    Official("hald_in1k_sre2l", "images", "`img_mode`", HALD, HALD_C, _DEMO, 6,
             "img_mode= # choose from fadrm, sre2l, lpld, and rded", "demo.sh:6"),
    Official("hald_in1k_sre2l", "images", "`img_mode`", HALD, HALD_C, _TRAIN_SH, 10,
             "mode= # choose from fadrm, sre2l, lpld, and rded", "train.sh:10"),
    Official("hald_in1k_fadrm", "images", "`img_mode=fadrm`", HALD, HALD_C, _DEMO, 6,
             "img_mode= # choose from fadrm, sre2l, lpld, and rded", "demo.sh:6"),
    Official("hald_in1k_fadrm", "images", "`img_mode=fadrm`", HALD, HALD_C, _TRAIN_SH, 10,
             "mode= # choose from fadrm, sre2l, lpld, and rded", "train.sh:10"),
    # CV-DD: the rows corrected for the version mix and the Tiny / ImageNet-1K script lines
    Official("cvdd_in1k", "stored batch", "HEAD 16", CVDD, HEAD_C, "relabel/scripts/imagenet1k_experiment/constants.sh",
             12, "bs=16", "constants.sh:12"),
    Official("cvdd_in1k", "stored batch", "v1 IN-1K `-b 50`", CVDD, V1_C,
             "relabel/scripts/imagenet1k_experiment/relabel_voter_res18_ipc10.sh", 18, "-b 50 \\",
             "imagenet1k_experiment/relabel_voter_res18_ipc10.sh:18"),
    Official("cvdd_in1k", "stored batch", "v1 Tiny 16", CVDD, V1_C,
             "relabel/scripts/tiny_imagenet_experiment/relabel_voter_res18_ipc10.sh", 18, "-b $bs \\",
             "tiny_imagenet_experiment/relabel_voter_res18_ipc10.sh:18"),
    Official("cvdd_in1k", "recover iterations", "HEAD 4000", CVDD, HEAD_C,
             "recover/scripts/imagenet1k_experiments/recover_voter_ipc10.sh", 36, "--iteration 4000 \\",
             "recover_voter_ipc10.sh:36"),
    Official("cvdd_in1k", "recover iterations", "v1 200", CVDD, V1_C,
             "recover/scripts/imagenet1k_experiments/recover_voter_ipc10.sh", 34, "--iteration 200 \\",
             "imagenet1k_experiments/recover_voter_ipc10.sh:34"),
    Official("cvdd_in1k", "recover iterations", "v1 200", CVDD, V1_C,
             "recover/scripts/tiny_imagenet_experiments/recover_voter_ipc10.sh", 36, "--iteration 200 \\",
             "tiny_imagenet_experiments/recover_voter_ipc10.sh:36"),
    Official("cvdd_in1k", "classes per unit (chunking)", "HEAD 100", CVDD, HEAD_C,
             "recover/scripts/imagenet1k_experiments/constants.sh", 9, "bs=100", "constants.sh:9"),
    Official("cvdd_in1k", "classes per unit (chunking)", "v1 10", CVDD, V1_C,
             "recover/scripts/imagenet1k_experiments/recover_voter_ipc10.sh", 26, "--batch-size 10 \\",
             "imagenet1k_experiments/recover_voter_ipc10.sh:26"),
    Official("cvdd_in1k", "relabel teacher", "one ResNet-18", CVDD, V1_C,
             "relabel/scripts/imagenet1k_experiment/relabel_voter_res18_ipc10.sh", 2, "teacher=ResNet18",
             "relabel_voter_res18_ipc10.sh:2, 16"),
    Official("cvdd_in1k_head", "relabel teacher", "HEAD: all five", CVDD, HEAD_C,
             "relabel/scripts/imagenet1k_experiment/relabel_voter_res18_ipc10.sh", 15,
             "--model-choice ResNet18 ResNet50 ShuffleNetV2 MobileNetV2 Densenet121 \\",
             "imagenet1k_experiment/relabel_voter_res18_ipc10.sh:14-16"),
    Official("cvdd_in1k_head", "relabel teacher scores", "56.4 42.3 52.5 44.2 40.6", CVDD, HEAD_C,
             "relabel/scripts/imagenet1k_experiment/relabel_voter_res18_ipc10.sh", 16,
             "--model-weight 56.4 42.3 52.5 44.2 40.6 \\", "imagenet1k_experiment/relabel_voter_res18_ipc10.sh:16"),
    Official("cvdd_in1k", "T", "`-T 20`", CVDD, HEAD_C, "validate/scripts/imagenet1k_experiment/voter_ipc10_r18.sh",
             36, "-T 20 \\", "imagenet1k_experiment/voter_ipc10_r18.sh:36"),
    Official("cvdd_tiny", "T", "`-T 20`", CVDD, HEAD_C, "validate/scripts/tiny_imagenet_experiment/voter_ipc10_r18.sh",
             35, "-T 20 \\", "tiny_imagenet_experiment/voter_ipc10_r18.sh:35"),
    Official("cvdd_in1k", "epochs", "`--epochs 300`", CVDD, HEAD_C,
             "validate/scripts/imagenet1k_experiment/voter_ipc10_r18.sh", 30, "--epochs 300 \\",
             "imagenet1k_experiment/voter_ipc10_r18.sh:30"),
    Official("cvdd_tiny", "epochs", "`--epochs 300`", CVDD, HEAD_C,
             "validate/scripts/tiny_imagenet_experiment/voter_ipc10_r18.sh", 29, "--epochs 300 \\",
             "tiny_imagenet_experiment/voter_ipc10_r18.sh:29"),
    Official("cvdd_in1k", "micro-batches", "`--gradient-accumulation-steps 2`", CVDD, HEAD_C,
             "validate/scripts/imagenet1k_experiment/voter_ipc10_r18.sh", 32, "--gradient-accumulation-steps 2 \\",
             "imagenet1k_experiment/voter_ipc10_r18.sh:32"),
    Official("cvdd_tiny", "micro-batches", "`--gradient-accumulation-steps 2`", CVDD, HEAD_C,
             "validate/scripts/tiny_imagenet_experiment/voter_ipc10_r18.sh", 31, "--gradient-accumulation-steps 2 \\",
             "tiny_imagenet_experiment/voter_ipc10_r18.sh:31"),
    Official("cvdd_in1k", "label epochs (SLI)", "`--epochs 300`", CVDD, HEAD_C,
             "relabel/scripts/imagenet1k_experiment/relabel_voter_res18_ipc10.sh", 23, "--epochs 300 \\",
             "imagenet1k_experiment/relabel_voter_res18_ipc10.sh:23"),
    Official("cvdd_tiny", "label epochs (SLI)", "`--epochs 300`", CVDD, HEAD_C,
             "relabel/scripts/tiny_imagenet_experiment/relabel_voter_res18_ipc10.sh", 22, "--epochs 300 \\",
             "tiny_imagenet_experiment/relabel_voter_res18_ipc10.sh:22"),
    Official("cvdd_in1k", "batch", "16", CVDD, HEAD_C, "validate/scripts/imagenet1k_experiment/constants.sh", 12,
             "bs=16", "constants.sh:12"),
    Official("cvdd_in1k", "test transform", "Resize 256 + CenterCrop 224", CVDD, HEAD_C,
             "validate/utils_validate.py", 100, "transforms.Resize(256),", "utils_validate.py:98-104"),
    Official("cvdd_tiny", "test transform", "none at 64 px", CVDD, HEAD_C, "validate/utils_validate.py", 105,
             'elif args.dataset_name == "tiny_imagenet":', "utils_validate.py:105-109"),
    Official("cvdd_in1k", "lr", "1e-3", CVDD, HEAD_C, "validate/train_fkd.py", 180, "args.adamw_lr = 0.001",
             "train_fkd.py:125-126 Tiny, 178-180"),
    Official("cvdd_in1k", "recover precision", "v1 fp16 autocast + GradScaler", CVDD, V1_C, "recover/recover.py",
             38, "scaler = GradScaler()  # Initialize GradScaler for mixed precision training",
             "recover/recover.py:17, 38-39"),
]
