module github.com/sluice-mta/sluice/cli

go 1.26.0
