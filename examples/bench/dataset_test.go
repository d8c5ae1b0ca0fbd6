package main

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPackedPayloadsFitAndCover(t *testing.T) {
	ds := newDataset(7, 400, 12)
	var points int64
	for _, p := range ds.packedPayloads(1) {
		require.LessOrEqual(t, 2+len(topic)+2+len(p), maxBytes)
		require.True(t, json.Valid(p))
		require.True(t, scanTelemetry(p, func(_ []byte, _ int64, n int) { points += int64(n) }))
	}
	require.Equal(t, ds.points(), points)
}

func TestPayloadSetKeepsEveryPayload(t *testing.T) {
	ds := newDataset(3, 20, 2)
	want := ds.naivePayloads()
	set := ds.naiveSet()
	require.Equal(t, len(want), set.len())
	for i, p := range want {
		require.Equal(t, p, set.at(i), "payload %d", i)
		require.Equal(t, len(p), cap(set.at(i)), "payload %d must not reach into the next", i)
	}
	require.Same(t, set, ds.naiveSet(), "built once per dataset")
	require.NotSame(t, ds.packedSet(1), ds.packedSet(0), "rebuilt for another QoS")
}
