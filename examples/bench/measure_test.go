package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLatencySampling(t *testing.T) {
	require.Equal(t, 1, sampling(sampleFrom-1))
	require.Equal(t, latencyEvery, sampling(sampleFrom))
}
