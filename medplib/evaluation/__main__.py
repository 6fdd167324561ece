"""`python -m medplib.evaluation ...`: the evaluation command line (see `medplib.evaluation.evaluate`)."""

from medplib.evaluation.evaluate import main

main()
