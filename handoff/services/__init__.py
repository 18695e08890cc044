"""Hand-off services: every write of the lifecycle goes through one function here.

- stages: the legal edges and `transition_lead`; `mark_leads_mql`, what happens when
  leads become MQLs (it opens their IS hand-offs).
- handoffs: the IS queue's and the sales rep's actions (claim, contact, BANT, qualify,
  return, disqualify, accept, reject, opportunity, notes).
- assignment: who gets a new hand-off. calendar: business hours and SLA deadlines.
- sla: the SLA monitor.
"""

from handoff.services.calendar import BusinessCalendar, calendar_for, get_policy, sla_clock
from handoff.services.handoffs import (
    BANT_KEYS,
    InvalidInput,
    accept_sql,
    add_lead_note,
    assign_handoff,
    claim_handoff,
    close_opportunity,
    disqualify_lead,
    log_contact_attempt,
    open_is_handoffs,
    open_opportunity,
    qualify_lead,
    reject_sql,
    return_to_nurturing,
    save_bant,
    user_named,
)
from handoff.services.sla import check_slas, sla_state_at
from handoff.services.stages import (
    LEGAL_TRANSITIONS,
    MQL_ENTRY_STAGES,
    REASON_REQUIRED,
    TERMINAL_STAGES,
    IllegalTransition,
    check_transition,
    is_legal,
    mark_lead_mql,
    mark_leads_mql,
    transition_lead,
)

__all__ = [
    "BANT_KEYS",
    "LEGAL_TRANSITIONS",
    "MQL_ENTRY_STAGES",
    "REASON_REQUIRED",
    "TERMINAL_STAGES",
    "BusinessCalendar",
    "IllegalTransition",
    "InvalidInput",
    "accept_sql",
    "add_lead_note",
    "assign_handoff",
    "calendar_for",
    "check_slas",
    "check_transition",
    "claim_handoff",
    "close_opportunity",
    "disqualify_lead",
    "get_policy",
    "is_legal",
    "log_contact_attempt",
    "mark_lead_mql",
    "mark_leads_mql",
    "open_is_handoffs",
    "open_opportunity",
    "qualify_lead",
    "reject_sql",
    "return_to_nurturing",
    "save_bant",
    "sla_clock",
    "sla_state_at",
    "transition_lead",
    "user_named",
]
