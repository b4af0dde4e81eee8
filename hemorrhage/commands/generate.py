"""hemorrhage generate --model M --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-p P]

Where the logits a token was chosen from are not finite (a collapsed model) the token is no
prediction (argmax of NaN is token 0): one line on stderr says so, and --json carries
`logits_finite: false` with the first such step.
"""

from hemorrhage.commands.common import add_model, load_model, print_json


def add_arguments(p) -> None:
    add_model(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    import jax.numpy as jnp
    import numpy as np

    from hemorrhage.errors import UserError
    import sys

    from hemorrhage.sim.generate import generate_checked, truncate_at_eos

    if not args.prompt:
        raise UserError("--prompt is empty")
    loaded = load_model(args)
    ids = loaded.tokenizer(args.prompt).input_ids
    toks, finite = generate_checked(
        loaded.model,
        jnp.asarray([ids]),
        args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    new = truncate_at_eos(np.asarray(toks[0]), loaded.tokenizer.eos_token_id)
    text = loaded.tokenizer.decode(new)
    bad = np.flatnonzero(~np.asarray(finite[0]))
    first_bad = int(bad[0]) if bad.size else None
    if first_bad is not None:
        print(
            f"hemorrhage: warning: the model's logits are not finite (NaN/inf) from generated token {first_bad} "
            f"on ({bad.size} of {args.max_new_tokens} steps): those tokens are not predictions",
            file=sys.stderr,
        )
    if args.json:
        print_json(
            {
                "model": loaded.name,
                "prompt": args.prompt,
                "continuation": text,
                "tokens": new,
                "logits_finite": first_bad is None,
                "first_nonfinite_step": first_bad,
            }
        )
    else:
        print(args.prompt + text)
    return 0
