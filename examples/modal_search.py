"""Run the Quora search on Modal GPUs with one command (needs a Modal token: `modal setup`).

    pip install "embedft[modal]"
    python examples/modal_search.py --data ../shared/data/quora_duplicates/quora_duplicate_pairs.tsv.gz
    python examples/modal_search.py --dry-run      # build and print the Modal objects; no network

The study stays in a local journal (runs/quora-modal-search/study.journal): rerun the same
command to resume. See docs/modal.md for what it costs.
"""

import argparse
from pathlib import Path

from embedft import OptunaSearch, SearchConfig

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(HERE / "modal_search.yaml"))
    parser.add_argument("--data", help="override base.data.source")
    parser.add_argument("--n-trials", type=int)
    parser.add_argument("--gpu", help="override modal.gpu, e.g. A100")
    parser.add_argument("--dry-run", action="store_true", help="build the App/Image/function offline and print them")
    args = parser.parse_args()

    data = SearchConfig.from_file(args.config).model_dump(mode="json")
    if args.data:
        data["base"]["data"]["source"] = args.data
    if args.n_trials:
        data["n_trials"] = args.n_trials
    if args.gpu:
        data["modal"]["gpu"] = args.gpu
    cfg = SearchConfig.from_dict(data)

    if args.dry_run:
        from embedft.executors import make_executor

        executor = make_executor(cfg)  # the Modal executor: App, Image, Volume and GPU function, built offline
        opts = executor.function_options
        print(
            f"app {executor.app.name}: function embedft_trial on GPU {opts['gpu']}, timeout {opts['timeout']}s, "
            f"max_containers {opts['max_containers']}, retries {cfg.modal.retries}, volume {cfg.modal.volume} at {cfg.modal.mount}"
        )
        print("image: debian_slim + " + " ".join(executor.requirements))
        print(f"{cfg.n_trials} trials over {sorted(cfg.space)}")
        return

    result = OptunaSearch(cfg).run()
    print(f"best trial #{result.best_number}: dev AP {result.best_value:.4f} {result.best_params}")
    print(f"test AP: base {result.base_test.get('cosine_ap', float('nan')):.4f} -> best {result.best_test.get('cosine_ap', float('nan')):.4f}")
    print(f"in-trial GPU seconds: {result.gpu_seconds:.0f} (the bill, with cold starts and idle time: modal.com/settings/usage); best model: {result.best_model_path}")


if __name__ == "__main__":
    main()
