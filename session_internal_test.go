package tbgateway

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestTransition(t *testing.T) {
	type row struct {
		from linkState
		ev   linkEvent
		to   linkState
		ok   bool
	}
	rows := []row{
		{linkIdle, evDial, linkConnecting, true},
		{linkConnecting, evConnected, linkStarting, true},
		{linkConnecting, evLost, linkWaiting, true},
		{linkStarting, evReleased, linkUp, true},
		{linkStarting, evLost, linkWaiting, true},
		{linkUp, evLost, linkWaiting, true},
		{linkWaiting, evRetry, linkConnecting, true},
		{linkUp, evClose, linkClosed, true},
		{linkWaiting, evClose, linkClosed, true},
		// Meaningless events keep the state.
		{linkIdle, evReleased, linkIdle, false},
		{linkUp, evConnected, linkUp, false},
		{linkWaiting, evLost, linkWaiting, false},
		{linkConnecting, evReleased, linkConnecting, false},
		{linkClosed, evDial, linkClosed, false},
		{linkClosed, evClose, linkClosed, false},
	}
	for _, r := range rows {
		to, ok := transition(r.from, r.ev)
		assert.Equal(t, r.to, to, "%v on %d", r.from, r.ev)
		assert.Equal(t, r.ok, ok, "%v on %d", r.from, r.ev)
	}
}

func TestPublicState(t *testing.T) {
	for _, c := range []struct {
		from, to linkState
		want     ConnectionState
		ok       bool
	}{
		{linkStarting, linkUp, StateUp, true},
		{linkUp, linkWaiting, StateDown, true},
		{linkWaiting, linkConnecting, StateReconnecting, true},
		{linkConnecting, linkWaiting, 0, false}, // a failed attempt: still down
		{linkStarting, linkWaiting, 0, false},   // never reported up
		{linkIdle, linkConnecting, 0, false},
	} {
		got, ok := publicState(c.from, c.to)
		assert.Equal(t, c.ok, ok, "%v → %v", c.from, c.to)
		assert.Equal(t, c.want, got, "%v → %v", c.from, c.to)
	}
}

func TestBackoff(t *testing.T) {
	maxDelay := 5 * time.Second
	for attempt := range 40 {
		d := backoff(attempt, maxDelay)
		ceil := min(maxDelay, backoffBase<<min(attempt, 29))
		assert.GreaterOrEqual(t, d, ceil/2, "attempt %d", attempt)
		assert.LessOrEqual(t, d, ceil, "attempt %d", attempt)
	}
	assert.LessOrEqual(t, backoff(0, maxDelay), backoffBase, "the first retry after a loss is quick")
}
