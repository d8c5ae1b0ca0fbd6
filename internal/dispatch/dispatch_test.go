package dispatch

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLaneBoundsAndRecovers(t *testing.T) {
	var panics atomic.Int32
	l := NewLane(1, 2, 0, func(v any, stack []byte) {
		assert.Equal(t, "boom", v)
		assert.NotEmpty(t, stack)
		panics.Add(1)
	})
	block := make(chan struct{})
	started := make(chan struct{})
	require.True(t, l.Submit(func() { close(started); <-block }, 0))
	<-started
	require.True(t, l.Submit(func() { panic("boom") }, 0))
	var ran atomic.Int32
	require.True(t, l.Submit(func() { ran.Add(1) }, 0))
	assert.False(t, l.Submit(func() {}, 0), "a full queue refuses instead of blocking")

	close(block)
	require.Eventually(t, func() bool { return ran.Load() == 1 }, time.Second, time.Millisecond)
	assert.Equal(t, int32(1), panics.Load(), "the panic was recovered and the worker went on")

	l.Close()
	l.Close() // idempotent
	assert.False(t, l.Submit(func() {}, 0))
	select {
	case <-l.Done():
	case <-time.After(time.Second):
		t.Fatal("workers did not exit")
	}
}

func TestLaneBoundsBytes(t *testing.T) {
	l := NewLane(1, 100, 1000, nil)
	defer l.Close()
	block := make(chan struct{})
	started := make(chan struct{})
	require.True(t, l.Submit(func() { close(started); <-block }, 600))
	<-started
	assert.True(t, l.Submit(func() {}, 400), "up to the bound")
	assert.False(t, l.Submit(func() {}, 1), "over the byte bound, whatever the count")
	close(block)
	require.Eventually(t, func() bool { return l.bytes.Load() == 0 }, time.Second, time.Millisecond,
		"bytes are given back when their jobs end")
	assert.True(t, l.Submit(func() {}, 5000), "one job over the bound passes an empty lane")
}

func TestSerialKeepsOrderAndWaits(t *testing.T) {
	var ran atomic.Int32
	s := NewSerial(nil, func() { ran.Add(1) })
	block := make(chan struct{})
	var got []int
	done := make(chan struct{})
	require.True(t, s.Submit(func() { <-block }))
	for i := range 1000 {
		require.True(t, s.Submit(func() { got = append(got, i) }), "never refused while open")
	}
	assert.GreaterOrEqual(t, s.Len(), 1000)
	waited := make(chan error, 1)
	go func() { waited <- s.WaitUntil(context.Background(), nil, func() bool { return s.Len() <= 10 }) }()
	select {
	case <-waited:
		t.Fatal("WaitUntil returned while the lane was long")
	default:
	}
	close(block)
	require.NoError(t, <-waited)
	require.True(t, s.Submit(func() { close(done) }))
	<-done
	s.Close()
	<-s.Done()
	require.Len(t, got, 1000)
	for i, v := range got {
		require.Equal(t, i, v, "jobs run in order")
	}
	assert.Equal(t, int32(1002), ran.Load(), "afterJob runs after every job")
	assert.False(t, s.Submit(func() {}), "closed")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s2 := NewSerial(nil, nil)
	stuck := make(chan struct{})
	s2.Submit(func() { <-stuck })
	s2.Submit(func() {})
	assert.ErrorIs(t, s2.WaitUntil(ctx, nil, func() bool { return s2.Len() == 0 }), context.Canceled)
	close(stuck)
	s2.Close()
	<-s2.Done()
}
