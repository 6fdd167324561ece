"""`python -m medplib.evaluation ...`: the evaluation command line (see `medplib.evaluation.evaluate`);
`--vocabulary` runs the held-out grounding-by-name report (`medplib.evaluation.vocabulary_eval`)."""

import sys

if "--vocabulary" in sys.argv[1:]:
    from medplib.evaluation.vocabulary_eval import main as vocabulary_main

    vocabulary_main([a for a in sys.argv[1:] if a != "--vocabulary"])
else:
    from medplib.evaluation.evaluate import main

    main()
