package transporttest_test

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/docketq/docket/transport/transporttest"
)

func TestSQLite(t *testing.T) {
	transporttest.Run(t, transporttest.Backend{NewURL: func(t *testing.T) string {
		return "sqlite:" + filepath.Join(t.TempDir(), "q.db")
	}})
}

func TestMemory(t *testing.T) {
	var n atomic.Int64
	transporttest.Run(t, transporttest.Backend{NewURL: func(t *testing.T) string {
		return fmt.Sprintf("memory:conformance-%d", n.Add(1))
	}})
}
