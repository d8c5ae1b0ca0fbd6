package pending

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTable(t *testing.T) {
	var tb Table[string, int]
	ch, ok := tb.Add("a")
	require.True(t, ok)
	_, ok = tb.Add("a")
	assert.False(t, ok, "a key waits once")

	assert.True(t, tb.Resolve("a", 7))
	assert.Equal(t, Reply[int]{Value: 7}, <-ch)
	assert.False(t, tb.Resolve("a", 8), "a late reply finds nobody and never blocks")

	ch, _ = tb.Add("b")
	tb.Remove("b")
	assert.False(t, tb.Resolve("b", 1), "a cancelled request gets nothing")
	select {
	case r := <-ch:
		t.Fatalf("unexpected reply %v", r)
	default:
	}

	c1, _ := tb.Add("c")
	c2, _ := tb.Add("d")
	lost := errors.New("lost")
	tb.FailAll(lost)
	assert.ErrorIs(t, (<-c1).Err, lost)
	assert.ErrorIs(t, (<-c2).Err, lost)
	assert.False(t, tb.Resolve("c", 1))
}
