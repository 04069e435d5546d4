"""uffd-harness: drive userfaultfd and observe the page-table bits it leaves."""
