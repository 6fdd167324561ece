"""`python -m medplib.evaluation ...`: the evaluation command line (see `medplib.evaluation.evaluate`);
`--vocabulary` runs the held-out grounding-by-name report (`medplib.evaluation.vocabulary_eval`), `--ct-head` "the
brain" on a real head CT (`medplib.evaluation.ct_head`)."""

import sys

if "--vocabulary" in sys.argv[1:]:
    from medplib.evaluation.vocabulary_eval import main as vocabulary_main

    vocabulary_main([a for a in sys.argv[1:] if a != "--vocabulary"])
elif "--ct-head" in sys.argv[1:]:
    from medplib.evaluation.ct_head import main as ct_head_main

    ct_head_main([a for a in sys.argv[1:] if a != "--ct-head"])
else:
    from medplib.evaluation.evaluate import main

    main()
