"""hemorrhage generate --model M --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-p P]"""

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
    from hemorrhage.sim.generate import generate, truncate_at_eos

    if not args.prompt:
        raise UserError("--prompt is empty")
    loaded = load_model(args)
    ids = loaded.tokenizer(args.prompt).input_ids
    toks = generate(loaded.model, jnp.asarray([ids]), args.max_new_tokens, temperature=args.temperature,
                    top_p=args.top_p, seed=args.seed)
    new = truncate_at_eos(np.asarray(toks[0]), loaded.tokenizer.eos_token_id)
    text = loaded.tokenizer.decode(new)
    if args.json:
        print_json({"model": loaded.name, "prompt": args.prompt, "continuation": text, "tokens": new})
    else:
        print(args.prompt + text)
    return 0
