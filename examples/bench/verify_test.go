package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVerifierCountsExactly(t *testing.T) {
	ds := newDataset(2, 3, 2)
	v := newVerifier(ds)
	for _, p := range ds.naivePayloads() {
		v.add(p)
	}
	v.add(ds.naivePayloads()[0])                          // a duplicate entry
	v.add([]byte(`{"Device 0000":[{"ts":1,"values":{}}`)) // truncated
	v.add([]byte(`{"Unknown":[{"ts":1700000000000,"values":{"k0":1}}]}`))
	require.Zero(t, v.stats().unique, "payloads are held, not scanned, while a run is timed")
	require.NotZero(t, v.heldBytes.Load())
	if v.offHeap {
		require.Zero(t, v.retained(), "payloads held outside the Go heap")
	} else {
		require.Equal(t, uint64(v.heldBytes.Load()), v.retained())
	}
	v.scanHeld()
	require.Zero(t, v.heldBytes.Load())
	v.add(ds.naivePayloads()[1]) // scanned at once from now on
	st := v.stats()
	require.Equal(t, ds.points(), st.unique)
	require.EqualValues(t, 4, st.dups)
	require.EqualValues(t, 1, st.malformed)
	require.EqualValues(t, 1, st.bad)
}
