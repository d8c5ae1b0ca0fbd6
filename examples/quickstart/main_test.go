package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRun runs the demo against its embedded server, as it is and after
// provisioning itself.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, run(ctx, "", "quickstart-token", provisioning{}, 500*time.Millisecond, 100*time.Millisecond, 2))
	require.NoError(t, run(ctx, "", "quickstart-token", provisioning{key: "k", secret: "s", name: "gw"}, 500*time.Millisecond, 100*time.Millisecond, 2))
}
