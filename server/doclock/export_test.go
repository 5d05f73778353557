package doclock

import "time"

// WithTimes returns l with another lease and longest hold, for tests
// that cannot wait for the real ones.
func (l *Locks) WithTimes(lease, maxHold time.Duration) *Locks {
	c := *l
	c.lease, c.maxHold = lease, maxHold
	return &c
}
