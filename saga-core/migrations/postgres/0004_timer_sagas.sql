-- Version 4: a timer names its saga, so that a process claims only the timers of sagas it
-- runs (a participant-only process on the same database must not hold a saga's timer it
-- cannot fire). Rows written before carry '' and are anyone's, as they were.
ALTER TABLE saga_timers ADD COLUMN saga TEXT NOT NULL DEFAULT '';
