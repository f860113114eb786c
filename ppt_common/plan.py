"""A PP block's ReductionPlan, framework-free: what ms_ppt.ppt and pt_reference.ppt share about it.

Both frameworks' `decide` return a ReductionPlan whose first fields are PLAN_FIELDS, in this order (pt_reference's
adds the authors' index form after them); `ppt_common.trace.record_from_plan` reads those fields.
"""

PLAN_FIELDS = ("policy", "variance", "scores", "node_max", "dest")
POLICY, VARIANCE, SCORES, NODE_MAX, DEST = range(len(PLAN_FIELDS))

# policy codes (ppt_common.trace.POLICY_NAMES): PPT's two policies, then the single-rule methods compared with it
PRUNE, POOL, PRUNE_FUSE, DECOUPLE_MERGE = range(4)

CLS_SCORE = 2.0  # the importance score of every prefix token: above any normalised score, so it ranks first

