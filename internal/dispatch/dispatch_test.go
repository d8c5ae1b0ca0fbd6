package dispatch

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLaneBoundsAndRecovers(t *testing.T) {
	var panics atomic.Int32
	l := NewLane(1, 2, func(v any, stack []byte) {
		assert.Equal(t, "boom", v)
		assert.NotEmpty(t, stack)
		panics.Add(1)
	})
	block := make(chan struct{})
	started := make(chan struct{})
	require.True(t, l.Submit(func() { close(started); <-block }))
	<-started
	require.True(t, l.Submit(func() { panic("boom") }))
	var ran atomic.Int32
	require.True(t, l.Submit(func() { ran.Add(1) }))
	assert.False(t, l.Submit(func() {}), "a full queue refuses instead of blocking")

	close(block)
	require.Eventually(t, func() bool { return ran.Load() == 1 }, time.Second, time.Millisecond)
	assert.Equal(t, int32(1), panics.Load(), "the panic was recovered and the worker went on")

	l.Close()
	l.Close() // idempotent
	assert.False(t, l.Submit(func() {}))
	select {
	case <-l.Done():
	case <-time.After(time.Second):
		t.Fatal("workers did not exit")
	}
}
