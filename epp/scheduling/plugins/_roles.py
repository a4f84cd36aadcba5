"""llm-d's phase roles: the label and which values let an endpoint serve each phase.

As upstream's filters: prefill, decode, encode, prefill-decode (and its deprecated alias both),
encode-prefill, encode-prefill-decode. decode-filter also keeps unlabeled endpoints (plain aggregated
servers); a label with any other value (or empty) is kept by none. Upstream's docs list
encode-decode too ("both encode and decode") but its filters omit it; here it decodes and encodes.
"""
ROLE_LABEL = "llm-d.ai/role"
DECODE_ROLES = frozenset({"decode", "prefill-decode", "both", "encode-prefill-decode", "encode-decode"})
PREFILL_ROLES = frozenset({"prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"})
# flex: takes both phases (a prefill-decode pod; epp-flex-role-filter decides when it acts as which)
FLEX_ROLES = PREFILL_ROLES & DECODE_ROLES
ENCODE_ROLES = frozenset({"encode", "encode-prefill", "encode-decode", "encode-prefill-decode"})
