module github.com/sluice-mta/sluice/deploy

go 1.26
