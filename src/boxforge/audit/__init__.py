"""`boxforge audit`: the label mistakes of a dataset, found by out-of-fold models, reviewed in a web page
and applied as a corrected copy. folds (the plan), oof (the fold models' predictions), rank (the four
kinds of suspected mistake and their scores), review (review.html), apply (the corrected copy).
"""
