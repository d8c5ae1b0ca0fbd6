package tbtest

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that servers and clients leave no goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
