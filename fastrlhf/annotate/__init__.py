"""Collecting human feedback: `fastrlhf annotate serve|export|import|stats`.

  serve   samples K responses per prompt from a policy (two versions mixed with --policy2) in the
          background and serves a page where annotators rank them, and a red-team page where they write
          prompts and flag the policy's responses; every judgement goes to SQLite (db.py) before the page
          says "saved". Without --prompts it serves the items others add (`fastrlhf iterate --labeler
          human` pushes each round's candidates)
  export  preference rows {prompt, responses, ranking, ...} that `fastrlhf rm --data` trains on, and the
          red-team prompts and pairs (export.py)
  import  Label Studio and Argilla ranking exports into the same database (importers.py)
  stats   judgements per annotator, time per item, inter-annotator agreement (stats.py)
"""
