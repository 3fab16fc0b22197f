#!/usr/bin/env bash
# Every training run and evaluation behind docs/RESULTS.md, with the exact commands.
#   scripts/results.sh                 all steps, in order
#   scripts/results.sh STEP [STEP...]  only these steps (names below, e.g. atop-rt3 eval-atop-rt3)
# Idempotent and resumable: a finished bundle or report is skipped, an interrupted training or
# evaluation continues from its checkpoint / partial.json when the step is run again.
# Wall times on 2 CPU cores: minutes for the classifiers, about an hour per AToP fine-tuning,
# about two hours per pipeline evaluation (see docs/RESULTS.md). Needs scripts/bootstrap.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PWD/.venv/bin:$PATH"

fit() {  # fit OUT TRAINER ARGS...: train (resuming), unless OUT is finished
  local out=$1; shift
  [ -e "$out/bundle.json" ] || purifier train "$@" --out "$out"
}

train() {  # train OUT TRAINER ARGS...: fit, then export to ONNX
  fit "$@"
  [ -e "$1/onnx/pipeline.onnx" ] || purifier export "$1"
}

compose() {  # compose OUT ARGS...: a purifier in front of another classifier (no training), exported
  local out=$1; shift
  [ -e "$out/bundle.json" ] || purifier compose "$@" --out "$out"
  [ -e "$out/onnx/pipeline.onnx" ] || purifier export "$out"
}

evaluate() {  # evaluate NAME [OPTIONS...]: the full protocol on bundles/NAME into reports/NAME, recorded in the bundle
  # Finished attack units are skipped; units the protocol gained since (worst of 10 draws, Square, transfer) run, and the
  # report is written again. Transfer sources: the committed fmnist-standard and fmnist-pgd-at (evaluate's default).
  local name=$1 baseline baselines=(); shift
  for baseline in reports/fmnist-standard reports/fmnist-pgd-at; do
    [ "$baseline" = "reports/$name" ] || [ ! -e "$baseline/report.json" ] || baselines+=(--baseline "$baseline")
  done
  purifier evaluate "bundles/$name" --out "reports/$name" --record "${baselines[@]}" "$@"
}

screen() {  # screen NAME: the 100-image screen (PGD-20 × EOT-4, worst of 4 draws) that picks which changes get the full protocol
  purifier evaluate "bundles/$1" --out "reports/screen/$1" --screen
}

certify() {  # certify NAME: randomized smoothing's CERTIFY on bundles/NAME into reports/NAME-certified, then the soundness check
  # (SmoothAdv inside every certified radius), recorded in the bundle
  purifier certify "bundles/$1" --out "reports/$1-certified" --record --soundness
}

rank_and_install() {  # the standings of every finished evaluation report; the winners become bundles/fmnist-default and fmnist-purifier
  local reports=() report
  for report in reports/fmnist-*/report.json; do reports+=("${report%/report.json}"); done
  python -m evaluation.ranking "${reports[@]}" --install
}

certify_screen() {  # certify_screen NAME: a 200-image CERTIFY with n = 1,000 (radii up to 2.46σ) that picks which denoiser gets the full run
  purifier certify "bundles/$1" --out "reports/screen/$1-certified" --images 200 --n 1000
}

# The served default, bundles/fmnist-default, and the default purifier, bundles/fmnist-purifier, are copies of the
# strongest bundles by evaluation.ranking's rule (step default). Served defaults before them: the AToP RT1 pipeline
# (bundles/fmnist-atop-rt1), the AToP RT2 pipeline (bundles/fmnist-atop-rt2) and a purifier trained only to
# reconstruct (by an earlier version of 'train purifier', so no step remakes it), bundles/fmnist-reconstruction.
declare -A STEPS=(
  [standard]="train bundles/fmnist-standard classifier --epochs 15"
  [pgd-at]="train bundles/fmnist-pgd-at classifier --method pgd --attack-steps 7 --eps 0.1 --epochs 15"
  [fgsm-rs]="train bundles/fmnist-fgsm-rs classifier --method fgsm_rs --eps 0.1 --epochs 15"
  [pretrained]="train bundles/fmnist-pretrained purifier --classifier bundles/fmnist-standard --epochs 10"
  [atop-rt1]="train bundles/fmnist-atop-rt1 atop --classifier bundles/fmnist-standard --purifier bundles/fmnist-pretrained --transform mask --epochs 5"
  [atop-rt2]="train bundles/fmnist-atop-rt2 atop --classifier bundles/fmnist-standard --purifier bundles/fmnist-pretrained --transform noise_mask --epochs 5"
  [atop-rt3]="train bundles/fmnist-atop-rt3 atop --classifier bundles/fmnist-standard --purifier bundles/fmnist-pretrained --transform noise_multimask --masks 2 --epochs 5"
  [atop-rt1-pgd]="train bundles/fmnist-atop-rt1-pgd atop --classifier bundles/fmnist-standard --purifier bundles/fmnist-pretrained --transform mask --attack pgd --attack-steps 5 --epochs 5 --precision auto"
  [jatp]="train bundles/fmnist-jatp jatp --classifier bundles/fmnist-standard --epochs 3"
  [jatp-pgd-at]="train bundles/fmnist-jatp-pgd-at jatp --classifier bundles/fmnist-pgd-at --epochs 3"
  [jatp-static]="train bundles/fmnist-jatp-static jatp --classifier bundles/fmnist-standard --examples static --feature-weight 0 --epochs 3"
  [flow]="fit bundles/fmnist-flow flow --epochs 10"
  [ijsat]="train bundles/fmnist-ijsat ijsat --flow bundles/fmnist-flow --epochs 10 --attack-steps 5"
  [jatp-on-pgd-at]="compose bundles/fmnist-jatp-on-pgd-at --purifier bundles/fmnist-jatp --classifier bundles/fmnist-pgd-at"
  [jatp-static-on-pgd-at]="compose bundles/fmnist-jatp-static-on-pgd-at --purifier bundles/fmnist-jatp-static --classifier bundles/fmnist-pgd-at"
  [jatp-on-ijsat]="compose bundles/fmnist-jatp-on-ijsat --purifier bundles/fmnist-jatp --classifier bundles/fmnist-ijsat"
  # plug-in purifiers for the frozen standard classifier, one change at a time: multi-step PGD, a wider U-Net (472k parameters),
  # the TRADES-style term, weight averaging with robust early stopping; each is screened, the best two get the protocol.
  [pretrained-wide]="train bundles/fmnist-pretrained-wide purifier --classifier bundles/fmnist-standard --widths 32,64,128 --transform mask --epochs 10 --precision auto"
  [atop-wide-pgd]="train bundles/fmnist-atop-wide-pgd atop --classifier bundles/fmnist-standard --purifier bundles/fmnist-pretrained-wide --transform mask --attack pgd --attack-steps 5 --epochs 5 --precision auto"
  # the same without the random transform: the mask costs every masked pipeline about 14 points of clean accuracy as served
  # (worst of 10 draws), so a masked plug-in purifier cannot reach the 88% clean goal; deterministic, it is judged on one draw
  [atop-wide-deterministic]="train bundles/fmnist-atop-wide-deterministic atop --classifier bundles/fmnist-standard --purifier bundles/fmnist-pretrained-wide --transform none --attack pgd --attack-steps 5 --epochs 5 --precision auto"
  # the TRADES term and weight averaging on top of the better of the two screens above, the deterministic one
  # (reports/screen: 81.45% clean, 60.0% at L∞ 0.1 against 75.95% and 53.0% for the masked wide purifier)
  [atop-wide-trades]="train bundles/fmnist-atop-wide-trades atop --classifier bundles/fmnist-standard --purifier bundles/fmnist-pretrained-wide --transform none --attack pgd --attack-steps 5 --trades-beta 1 --epochs 5 --precision auto"
  # the TRADES term screened worse (clean 78.55% vs 81.45%, p = 0.0004; L∞ 57.0% vs 60.0%), so weight averaging goes without it
  [atop-wide-ema]="train bundles/fmnist-atop-wide-ema atop --classifier bundles/fmnist-standard --purifier bundles/fmnist-pretrained-wide --transform none --attack pgd --attack-steps 5 --ema 0.999 --validate 1000 --epochs 5 --precision auto"
  # the AT controls: TRADES, and PGD-AT / TRADES widened to the parameter count of the wide pipeline (472k purifier
  # + 78k classifier: widths 43,86,172 give 555k)
  [trades]="train bundles/fmnist-trades classifier --method trades --beta 6 --attack-steps 7 --eps 0.1 --epochs 15 --precision auto"
  [pgd-at-wide]="train bundles/fmnist-pgd-at-wide classifier --method pgd --attack-steps 7 --eps 0.1 --widths 43,86,172 --epochs 15 --precision auto"
  [trades-wide]="train bundles/fmnist-trades-wide classifier --method trades --beta 6 --attack-steps 7 --eps 0.1 --widths 43,86,172 --epochs 15 --precision auto"
  # purification on top of adversarial training: fine-tuned against the PGD-AT classifier without the random transform (the goal
  # is clean within a point of PGD-AT, which the mask's 14-point cost rules out), and jointly with it through the transform
  [atop-on-pgd-at]="train bundles/fmnist-atop-on-pgd-at atop --classifier bundles/fmnist-pgd-at --purifier bundles/fmnist-pretrained-wide --transform none --attack pgd --attack-steps 5 --epochs 5 --precision auto"
  [atop-joint-pgd-at]="train bundles/fmnist-atop-joint-pgd-at atop --classifier bundles/fmnist-pgd-at --purifier bundles/fmnist-pretrained-wide --transform mask --attack pgd --attack-steps 5 --joint --epochs 5 --precision auto"
  # IJSAT re-tested: with the clean-interpolation term, and on top of the PGD-AT classifier, at IJSAT's budget
  [ijsat-clean]="train bundles/fmnist-ijsat-clean ijsat --flow bundles/fmnist-flow --epochs 10 --attack-steps 5 --clean-weight 1 --precision auto"
  [ijsat-on-pgd-at]="train bundles/fmnist-ijsat-on-pgd-at ijsat --flow bundles/fmnist-flow --init bundles/fmnist-pgd-at --epochs 10 --attack-steps 5 --clean-weight 1 --precision auto"
  # that run overfitted catastrophically (0.0% at L∞ 0.1): again as a fine-tuning, at a fifth of the peak learning rate, for
  # half the epochs, bundling the epoch with the best PGD-10 accuracy on 1,000 held-out training images
  [ijsat-on-pgd-at-selected]="train bundles/fmnist-ijsat-on-pgd-at-selected ijsat --flow bundles/fmnist-flow --init bundles/fmnist-pgd-at --epochs 5 --lr 0.01 --validate 1000 --attack-steps 5 --clean-weight 1 --precision auto"
  # randomized smoothing: denoisers for the frozen standard classifier, and noise-trained classifiers as controls
  [denoiser-0.25]="train bundles/fmnist-denoiser-0.25 atop --classifier bundles/fmnist-standard --transform gaussian --noise-std 0.25 --attack none --targets classifier --pretrain-epochs 5 --epochs 5 --precision auto"
  [denoiser-0.5]="train bundles/fmnist-denoiser-0.5 atop --classifier bundles/fmnist-standard --transform gaussian --noise-std 0.5 --attack none --targets classifier --pretrain-epochs 5 --epochs 5 --precision auto"
  # a second denoiser recipe at σ 0.25: 10 more epochs of the stability objective weighted 10× against
  # L1 reconstruction, no GAN term (closer to Salman et al.'s stability-only objective)
  [denoiser-0.25-stability]="train bundles/fmnist-denoiser-0.25-stability atop --classifier bundles/fmnist-standard --purifier bundles/fmnist-denoiser-0.25 --transform gaussian --noise-std 0.25 --attack none --targets classifier --lam 10 --gan-weight 0 --epochs 10 --precision auto"
  [noise-0.25]="train bundles/fmnist-noise-0.25 classifier --method gaussian --noise-std 0.25 --epochs 15 --precision auto"
  [noise-0.5]="train bundles/fmnist-noise-0.5 classifier --method gaussian --noise-std 0.5 --epochs 15 --precision auto"
)
ORDER=(standard pgd-at fgsm-rs pretrained atop-rt1 atop-rt2 atop-rt3 atop-rt1-pgd jatp jatp-static jatp-on-pgd-at jatp-static-on-pgd-at jatp-pgd-at flow ijsat jatp-on-ijsat)
for name in fmnist-standard fmnist-pgd-at fmnist-fgsm-rs fmnist-reconstruction fmnist-pretrained fmnist-atop-rt1 fmnist-atop-rt2 fmnist-atop-rt3 fmnist-atop-rt1-pgd \
    fmnist-jatp fmnist-jatp-static fmnist-jatp-on-pgd-at fmnist-jatp-static-on-pgd-at fmnist-jatp-pgd-at fmnist-ijsat fmnist-jatp-on-ijsat; do
  STEPS[eval-${name#fmnist-}]="evaluate $name"
  ORDER+=("eval-${name#fmnist-}")
done
# composed bundles: the attacks on their classifier were already run in that classifier's own evaluation
STEPS[eval-jatp-on-pgd-at]+=" --reuse-classifier reports/fmnist-pgd-at"
STEPS[eval-jatp-static-on-pgd-at]+=" --reuse-classifier reports/fmnist-pgd-at"
STEPS[eval-jatp-pgd-at]+=" --reuse-classifier reports/fmnist-pgd-at"
STEPS[eval-jatp-on-ijsat]+=" --reuse-classifier reports/fmnist-ijsat"
# the AToP RT1 pipeline on the same screen, the yardstick each change is screened against
STEPS[screen-atop-rt1]="screen fmnist-atop-rt1"
ORDER+=(screen-atop-rt1 pretrained-wide)
for name in atop-rt1-pgd atop-wide-pgd atop-wide-deterministic atop-wide-trades atop-wide-ema; do
  STEPS[screen-$name]="screen fmnist-$name"
  [ "$name" = atop-rt1-pgd ] || ORDER+=("$name")  # atop-rt1-pgd is trained earlier in ORDER
  ORDER+=("screen-$name")
done
# the full protocol for the two plug-in purifiers that screen best (deterministic: one draw)
for name in atop-wide-deterministic atop-wide-trades; do
  STEPS[eval-$name]="evaluate fmnist-$name --reuse-classifier reports/fmnist-standard"
  ORDER+=("eval-$name")
done
for name in atop-on-pgd-at atop-joint-pgd-at; do
  STEPS[screen-$name]="screen fmnist-$name"
  ORDER+=("$name" "screen-$name")
done
# the AT control on the same screen, the yardstick of purification on top of adversarial training
STEPS[screen-pgd-at-wide]="screen fmnist-pgd-at-wide"
ORDER+=(trades pgd-at-wide trades-wide ijsat-clean ijsat-on-pgd-at ijsat-on-pgd-at-selected)
for name in trades pgd-at-wide trades-wide ijsat-clean ijsat-on-pgd-at ijsat-on-pgd-at-selected; do  # their full protocol (joint space added below)
  STEPS[eval-$name]="evaluate fmnist-$name"
  ORDER+=("eval-$name")
done
ORDER+=(screen-pgd-at-wide)
for name in denoiser-0.25 denoiser-0.5 noise-0.25 noise-0.5; do
  STEPS[certify-$name]="certify fmnist-$name"
  ORDER+=("$name" "certify-$name")
done
STEPS[certify-denoiser-0.25-stability]="certify fmnist-denoiser-0.25-stability"
for name in denoiser-0.25 denoiser-0.25-stability; do
  STEPS[certify-screen-$name]="certify_screen fmnist-$name"
done
ORDER+=(denoiser-0.25-stability certify-screen-denoiser-0.25 certify-screen-denoiser-0.25-stability certify-denoiser-0.25-stability)
# IJSAT's joint-space attack (latent space of bundles/fmnist-flow) on these rows; joint-NAME is the same step as eval-NAME
for name in fmnist-standard fmnist-pgd-at fmnist-ijsat fmnist-jatp-on-ijsat fmnist-trades fmnist-pgd-at-wide fmnist-trades-wide \
    fmnist-ijsat-clean fmnist-ijsat-on-pgd-at fmnist-ijsat-on-pgd-at-selected fmnist-atop-wide-deterministic fmnist-atop-wide-trades; do
  STEPS[eval-${name#fmnist-}]+=" --joint-flow bundles/fmnist-flow"
  STEPS[joint-${name#fmnist-}]=${STEPS[eval-${name#fmnist-}]}
done

# the shipped default and default purifier: the strongest bundles among all finished reports, by the declared rule
STEPS[default]="rank_and_install"
ORDER+=(default)

for step in "${@:-${ORDER[@]}}"; do
  [ -n "${STEPS[$step]:-}" ] || { echo "unknown step '$step'; steps: ${ORDER[*]}" >&2; exit 2; }
  echo "== $step: ${STEPS[$step]}" >&2
  ${STEPS[$step]}
done
